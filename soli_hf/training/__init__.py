"""Training SOLI and the dual-encoder Q-Former (`model_type`): the recipe (`TrainingConfig`), data batches,
curriculum, SCST, checkpoints and the loop.

from soli_hf.training import TrainingConfig, train
train(TrainingConfig(data="../shared/data/flickr8k", output_dir="runs/soli"))
"""

from .config import TrainingConfig, parse_training_config
from .loop import train

__all__ = ["TrainingConfig", "parse_training_config", "train"]
