"""Train a captioner: `accelerate launch scripts/train.py --config configs/flickr8k_cpu.yaml [--flag value ...]`
(SOLI), or `--config configs/dual_qformer/stage1.yaml` (the dual-encoder Q-Former, `model_type: dual_qformer`).

Flags are the fields of `soli_hf.training.TrainingConfig` (`--help` lists them); they override the YAML recipe.
A recipe, a model source or a run folder that cannot be used, and a full disk, end the run with one line saying
what is wrong (exit status 2); the traceback is logged at DEBUG level.
"""

import logging
import sys

from soli_hf.training import parse_training_config, train

logger = logging.getLogger("train")

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_dir = train(parse_training_config())
    except (ValueError, OSError) as error:
        logger.debug("the run stopped", exc_info=True)
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"model folder: {model_dir}")
