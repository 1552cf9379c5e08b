"""Train SOLI: `accelerate launch scripts/train.py --config configs/flickr8k_cpu.yaml [--flag value ...]`.

Flags are the fields of `soli_hf.training.TrainingConfig` (`--help` lists them); they override the YAML recipe.
"""

import logging

from soli_hf.training import parse_training_config, train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"model folder: {train(parse_training_config())}")
