"""What SCST's CIDEr-D reward sees: greedy vs sampled captions of saved SOLI models on training photos.

    python scripts/scst_rewards.py runs/ablation/soli/model runs/ablation/soli_scst_lr2e-4/model \
        [--data ../shared/data/flickr8k --split train --every 24 --samples 5]

The reward's document frequencies are those of the training references, as in SCST (`training.scst`). Prints one
JSON line per model: mean greedy reward, mean sample reward, greedy caption length (words, `<eos>` included).
"""

import argparse
import json

import torch

from soli_hf import SoliForConditionalGeneration, SoliProcessor
from soli_hf.data import load_caption_dataset
from soli_hf.training.scst import build_reward_scorer, training_rewards

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="saved SOLI folders")
    parser.add_argument("--data", default="../shared/data/flickr8k")
    parser.add_argument("--split", default="train", help="the photos to caption")
    parser.add_argument("--every", type=int, default=24, help="every N-th photo of the split (24: 250 of 6,000)")
    parser.add_argument("--samples", type=int, default=5, help="sampled captions per photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = load_caption_dataset(args.data, "train")
    rows = load_caption_dataset(args.data, args.split)
    rows = rows.select(range(0, len(rows), args.every))
    for folder in args.models:
        torch.manual_seed(args.seed)
        model = SoliForConditionalGeneration.from_pretrained(folder)
        processor = SoliProcessor.from_pretrained(folder)
        scorer = build_reward_scorer(train["captions"], processor.tokenizer)
        print(json.dumps({"model": folder} | training_rewards(model, processor, rows, scorer, args.samples)))
