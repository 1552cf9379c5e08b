"""The training recipe as data: one dataclass, parsed from a YAML file and/or command-line flags."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

PHASES = ("xe", "scst")
MODEL_VARIANTS = ("soli", "baseline")
SCHEDULES = ("cosine", "plateau")
SCST_BASELINES = ("greedy", "mean")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class TrainingConfig:
    """Everything that decides a training run; `configs/*.yaml` hold the recipes behind every reported number.

    Flags on the command line override the YAML file given with `--config`.
    """

    # --- data
    data: str = field(default="../shared/data/flickr8k", metadata={"help": "caption data (any loader's format)"})
    data_format: str | None = field(default=None, metadata={"help": "flickr8k|coco|karpathy|imagefolder; detected"})
    train_split: str = "train"
    eval_split: str = "dev"
    on_bad_sample: str = field(default="skip", metadata={"help": "skip (count, log at the end) or error (stop)"})
    max_train_images: int | None = field(default=None, metadata={"help": "use only the first N training images"})
    max_eval_images: int | None = field(default=None, metadata={"help": "use only the first N evaluation images"})
    captions_per_image: int = field(default=5, metadata={"help": "captions decoded per encoded image"})
    num_workers: int = 0
    # --- LR degradation at training time (evaluation uses the processor's fixed default)
    random_degradation: bool = field(default=True, metadata={"help": "randomise the LR degradation per sample"})
    degradations: list[str] = field(default_factory=lambda: ["bicubic", "bilinear", "step", "step_gaussian"])
    blur_sigma_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    jpeg_quality_range: list[int] | None = field(default=None, metadata={"help": "e.g. 40 95; none: no JPEG"})
    min_scale_factor: float | None = field(
        default=None, metadata={"help": "most severe scale factor of the source; none: straight to image_size"}
    )
    degradation_ramp_epochs: float = field(
        default=0.0, metadata={"help": "epochs over which the scale factor ramps from mild to min_scale_factor"}
    )
    # --- model
    model_variant: str = field(default="soli", metadata={"help": "soli, or baseline: LR branch only, no SR/NCE"})
    backbone: str | None = field(
        default="../shared/weights/mobilenet_v2_1.0_224", metadata={"help": "pretrained MobileNetV2 folder"}
    )
    model_config: str | None = field(default=None, metadata={"help": "a SoliConfig JSON (architecture)"})
    init_from: str | None = field(default=None, metadata={"help": "a saved SOLI folder to start from (scst)"})
    tokenizer: str | None = field(default=None, metadata={"help": "a saved tokenizer/processor folder"})
    vocab_min_frequency: int = 5
    contrastive_weight: float | None = None
    sr_loss_weight: float | None = None
    label_smoothing: float | None = None
    # --- optimisation
    phase: str = field(default="xe", metadata={"help": "xe (cross-entropy) or scst (self-critical, CIDEr-D)"})
    num_epochs: int = 8
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 1e-4
    weight_decay: float = 0.01
    schedule: str = field(default="cosine", metadata={"help": "cosine (with warmup) or plateau"})
    warmup_steps: int = 200
    max_grad_norm: float = 5.0
    freeze_backbone_epochs: int = field(default=0, metadata={"help": "backbone weights frozen for N epochs"})
    mixed_precision: str = "no"
    # --- curriculum (DESIGN.md 6): branch B sees bicubic (alpha 0) -> super-resolved (alpha 1)
    curriculum_start_epoch: float = 0.0
    curriculum_epochs: float = field(default=2.0, metadata={"help": "epochs over which alpha ramps from 0 to 1"})
    # --- SCST
    scst_samples: int = 5
    scst_baseline: str = field(default="mean", metadata={"help": "greedy or mean (of the other samples)"})
    max_caption_tokens: int = 20
    # --- evaluation, checkpoints, logging
    eval_batch_size: int = 100
    early_stopping_patience: int = 3
    save_every_steps: int = 200
    keep_checkpoints: int = 2
    output_dir: str = "runs/soli"
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in output_dir"})
    report_to: str = field(default="tensorboard", metadata={"help": "an accelerate tracker, or none"})
    seed: int = 0
    log_every_steps: int = 10

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("phase", self.phase, PHASES),
            ("model_variant", self.model_variant, MODEL_VARIANTS),
            ("schedule", self.schedule, SCHEDULES),
            ("scst_baseline", self.scst_baseline, SCST_BASELINES),
            ("mixed_precision", self.mixed_precision, MIXED_PRECISION),
            ("on_bad_sample", self.on_bad_sample, ("skip", "error")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if self.phase == "scst" and self.init_from is None:
            raise ValueError("phase scst fine-tunes a cross-entropy model: give --init_from MODEL_DIR")
        if self.captions_per_image < 1 or self.batch_size < 1 or self.num_epochs < 1:
            raise ValueError("captions_per_image, batch_size and num_epochs must be positive")
        if self.phase == "scst" and self.scst_baseline == "mean" and self.scst_samples < 2:
            raise ValueError("the mean-of-samples SCST baseline needs scst_samples >= 2")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (saved beside the model as `training_config.json`)."""
        return dataclasses.asdict(self)


def parse_training_config(argv: Sequence[str] | None = None) -> TrainingConfig:
    """`--config recipe.yaml` (optional) gives the defaults; every other flag overrides it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(TrainingConfig)
    parser.add_argument("--config", default=None, help="a YAML recipe (keys: TrainingConfig fields)")
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**load_recipe(known.config))
    config, _ = parser.parse_args_into_dataclasses(argv)
    return config


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe, naming the file and the unknown keys when it does not fit `TrainingConfig`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training recipe not found: {path}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of TrainingConfig fields, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {unknown}")
    return values
