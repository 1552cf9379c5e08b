"""Turn a trained model folder (`OUTPUT/model` of scripts/train.py) into a shippable one:

    python scripts/ship_model.py runs/flickr8k_cpu/model models/soli-flickr8k-lr64 [--num-beams 3]
        [--no-repeat-ngram-size 3]
    python scripts/ship_model.py runs/aligncap/lstm/model models/aligncap-flickr30k-lstm --num-beams 1 \
        --no-repeat-ngram-size 0

Any family (SOLI, the dual-encoder Q-Former, the AlignCap region captioner: `AutoModel` / `AutoProcessor` read the
folder's `model_type`). Re-saves the weights (safetensors), processor and code files with the current soli_hf, sets
the default generation (beam size, no repeated n-gram, never `<unk>`), and copies the run's training_config.json,
metrics.json and training_curves.png. Write SOLI's model card afterwards with scripts/make_model_card.py.
"""

import argparse
import shutil
from pathlib import Path

from transformers import AutoModel, AutoProcessor

import soli_hf  # noqa: F401  (registers the families with the Auto classes)
from soli_hf.training.model_setup import suppress_unknown_token

RUN_FILES = ("training_config.json", "metrics.json", "training_curves.png")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trained", type=Path, help="a trained model folder")
    parser.add_argument("out", type=Path, help="the folder to write (replaced)")
    parser.add_argument("--num-beams", type=int, default=3, help="default beam size of generate() and the pipeline")
    parser.add_argument(
        "--no-repeat-ngram-size", type=int, default=3, help="no n-gram twice in a caption (0: allowed); chosen on dev"
    )
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.trained)
    processor = AutoProcessor.from_pretrained(args.trained)
    model.generation_config.num_beams = args.num_beams
    model.generation_config.no_repeat_ngram_size = args.no_repeat_ngram_size
    suppress_unknown_token(model, processor.tokenizer)
    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    for name in RUN_FILES:
        if (args.trained / name).is_file():
            shutil.copyfile(args.trained / name, args.out / name)
    print(f"wrote {args.out}")
