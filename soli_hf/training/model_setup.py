"""What a training run starts from: the model and its processor, of the recipe's `model_type`.

SOLI: a tokenizer built from the training captions (or loaded) and a new or loaded SOLI. The dual-encoder Q-Former:
`DualQFormerForConditionalGeneration.from_pretrained_parts` (the recipe's encoders and language model, the
language model's tokenizer, new Q-Formers sized by `model_config`), or a saved folder (`init_from`, e.g. stage 1's
model for stage 2); its encoders and language model stay frozen, and only the rest goes to the optimizer. The AlignCap
region captioner: `AlignCapForConditionalGeneration.from_pretrained_parts` (the recipe's encoders, its decoder, a word
tokenizer and tag words built from the training phrases, the recipe's modules and loss weights), or `init_from`; its
encoders, segmenter and language model stay frozen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from datasets import Dataset
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError
from transformers import AutoConfig, AutoProcessor, PreTrainedModel, ProcessorMixin

from ..configuration_aligncap import AlignCapConfig
from ..configuration_dual_qformer import DualQFormerConfig
from ..configuration_soli import SoliConfig
from ..data import iter_captions
from ..image_processing_soli import SoliImageProcessor
from ..modeling_aligncap import AlignCapForConditionalGeneration
from ..modeling_dual_qformer import DualQFormerForConditionalGeneration
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_aligncap import AlignCapProcessor
from ..processing_dual_qformer import DualQFormerProcessor
from ..processing_soli import SoliProcessor
from ..storage import read_json
from ..tokenization_soli import build_tokenizer
from .config import TrainingConfig
from .tags import build_tag_vocabulary

Loaded = TypeVar("Loaded")
# what transformers and safetensors raise for a folder or file that is missing, truncated or not what it should be
_LOAD_ERRORS = (OSError, ValueError, TypeError, SafetensorError)


def model_sources(config: TrainingConfig) -> dict[str, str]:
    """The recipe's fields that the run loads from, {field: folder, file or Hub id}: `init_from` (model and
    processor) when given; else, for SOLI, `tokenizer` when given, `model_config` when given, and `backbone` without
    a `model_config` (which builds the architecture with freshly initialised weights); for the dual-encoder
    Q-Former, its parts (`backbone`, `finegrained_encoder`, `language_model`) and `model_config` when given."""
    if config.init_from is not None:
        return {"init_from": config.init_from}
    if config.model_type == "dual_qformer":
        names = ["backbone", "finegrained_encoder", "language_model", "model_config"]
    elif config.model_type == "aligncap":
        names = ["backbone", "finegrained_encoder", "language_model", "tokenizer", "model_config"]
    else:
        names = ["tokenizer", "model_config"] + (["backbone"] if config.model_config is None else [])
    return {name: getattr(config, name) for name in names if getattr(config, name) is not None}


def check_model_sources(config: TrainingConfig) -> None:
    """Fail before any data is read on a source of `model_sources` that cannot be right: a folder that does not
    exist and is no Hub id either (a Hub id is loaded when the model is built), a `model_config` that is no file,
    or a JSON file (config, tokenizer, processor) that does not parse, e.g. one cut short by a failed copy.

    Raises:
        FileNotFoundError / NotADirectoryError: naming the field and the path.
        ValueError: naming the field and the JSON file, with the line and column of the error.
    """
    for name, source in model_sources(config).items():
        path = Path(source)
        gguf = name == "language_model" and path.suffix == ".gguf"
        if (name == "model_config" or gguf) and not path.is_file():
            kind = "a GGUF language model" if gguf else "a model config JSON"
            raise FileNotFoundError(f"{name} {source}: no such file ({kind})")
        if not (name == "model_config" or gguf) and path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{name} {source}: a file, not a model folder")
        if not path.exists() and not _is_hub_id(source):
            raise FileNotFoundError(f"{name} {source}: the folder does not exist (nor is it a Hub id)")
        for json_file in [] if gguf else [path] if path.is_file() else sorted(path.glob("*.json")):
            try:
                read_json(json_file)
            except ValueError as error:
                raise ValueError(f"{name} {source}: {error}") from error


def _is_hub_id(source: str) -> bool:
    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def load_source(name: str, source: str, load: Callable[[str], Loaded]) -> Loaded:
    """`load(source)`; a source that is missing, truncated or of the wrong kind raises `ValueError` naming the
    recipe field and the source (the loader's own error follows, and is chained)."""
    try:
        return load(source)
    except _LOAD_ERRORS as error:
        where = "folder" if Path(source).exists() else "Hub id (no such folder)"
        raise ValueError(f"{name} {source}: cannot load this {where}: {error}") from error


def build_model_and_processor(config: TrainingConfig, train_rows: Dataset) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model the recipe trains and its processor, of its `model_type`; SOLI's and AlignCap's tokenizer and tag
    words come from the training captions or phrases (`train_rows`)."""
    if config.model_type == "dual_qformer":
        return build_dual_qformer(config)
    if config.model_type == "aligncap":
        return build_aligncap(config, train_rows)
    processor = build_processor(config, iter_captions(train_rows))
    return build_model(config, processor, train_rows["captions"]), processor


def build_processor(config: TrainingConfig, training_captions: Iterable[str]) -> SoliProcessor:
    """The processor of `init_from` or `tokenizer` when given; otherwise a new tokenizer built from the training
    captions (words seen at least `vocab_min_frequency` times) and the default image processor."""
    source = config.init_from or config.tokenizer
    if source is not None:
        loaded = load_source("init_from" if config.init_from else "tokenizer", source, AutoProcessor.from_pretrained)
        if isinstance(loaded, SoliProcessor):
            return loaded
        return SoliProcessor(image_processor=SoliImageProcessor(), tokenizer=loaded)
    tokenizer = build_tokenizer(training_captions, min_frequency=config.vocab_min_frequency)
    return SoliProcessor(image_processor=SoliImageProcessor(), tokenizer=tokenizer)


def _loss_overrides(config: TrainingConfig) -> dict[str, Any]:
    names = (
        "contrastive_weight",
        "sr_loss_weight",
        "label_smoothing",
        "lr_only_probability",
        "distillation_weight",
        "tag_loss_weight",
    )
    return {name: getattr(config, name) for name in names if getattr(config, name) is not None}


def _tag_settings(
    config: TrainingConfig, processor: SoliProcessor, training_references: Sequence[Sequence[str]] | None
) -> dict[str, Any]:
    """The tag head of a new model: `num_tags` words of the training references (`tags.build_tag_vocabulary`), or
    nothing when `num_tags` is 0."""
    if config.num_tags == 0:
        return {}
    if training_references is None:
        raise ValueError("num_tags > 0: build_model needs the training references to choose the tag words")
    tag_words = build_tag_vocabulary(processor.tokenizer, training_references, config.num_tags)
    return {"num_tags": config.num_tags, "tag_words": tag_words, "tags_in_memory": config.tags_in_memory}


#: The architecture a recipe sets for a new model (recipe fields = `SoliConfig` fields): what its branches see and
#: its decoder widths, each with its recipe default, the value that keeps an `init_from` model's own (`None`: the
#: `SoliConfig` default for a new model).
_ARCHITECTURE = {
    "branch_b_input": "super_resolved",
    "lr_branch_upsample": 1,
    "hidden_size": None,
    "embedding_size": None,
}


def _check_init_from_architecture(config: TrainingConfig, model: SoliForConditionalGeneration) -> None:
    """A loaded model keeps its architecture; a recipe asking for other branch inputs or other decoder widths is
    refused (they decide which modules the model has and their shapes)."""
    for name, keep in _ARCHITECTURE.items():
        asked, saved = getattr(config, name), getattr(model.config, name)
        if asked != keep and asked != saved:
            raise ValueError(
                f"init_from {config.init_from} has {name}={saved!r}; the recipe asks for {name}={asked!r} (leave "
                f"{name} at {keep!r} to keep the model's)"
            )


def _check_init_from_tags(config: TrainingConfig, model: SoliForConditionalGeneration) -> None:
    """A loaded model keeps its tag head; a recipe asking for another one is refused (the head cannot be resized)."""
    asked = (config.num_tags, config.tags_in_memory)
    if config.num_tags and asked != (model.config.num_tags, model.config.tags_in_memory):
        raise ValueError(
            f"init_from {config.init_from} has num_tags={model.config.num_tags}, tags_in_memory="
            f"{model.config.tags_in_memory}; the recipe asks for num_tags={config.num_tags}, tags_in_memory="
            f"{config.tags_in_memory} (leave num_tags at 0 to keep the model's tags)"
        )


def build_model(
    config: TrainingConfig,
    processor: SoliProcessor,
    training_references: Sequence[Sequence[str]] | None = None,
) -> SoliForConditionalGeneration:
    """`init_from` (a saved SOLI) when given; else a new SOLI (or baseline) with the pretrained backbone, sized
    to the tokenizer's vocabulary, the architecture of `model_config` when given, and the recipe's branch inputs
    (`branch_b_input`, `lr_branch_upsample`) and decoder widths (`hidden_size`, `embedding_size`, when set). The
    recipe's `decoder_dropout`, when set, is the model's in either case (it changes no weight).

    `training_references` (the captions of each training image) choose the tag words of a new model when the
    recipe asks for tags (`num_tags > 0`)."""
    overrides = _loss_overrides(config)
    if config.init_from is not None:
        model = load_source("init_from", config.init_from, SoliForConditionalGeneration.from_pretrained)
        _check_init_from_tags(config, model)
        _check_init_from_architecture(config, model)
        for name, value in overrides.items():
            setattr(model.config, name, value)
        if config.decoder_dropout is not None:
            model.config.decoder_dropout = model.decoder.dropout.p = config.decoder_dropout
        return model
    tokenizer = processor.tokenizer
    values: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_sr_branch": config.model_variant == "soli",
        **{name: getattr(config, name) for name in _ARCHITECTURE if getattr(config, name) is not None},
        **({"decoder_dropout": config.decoder_dropout} if config.decoder_dropout is not None else {}),
        **overrides,
        **_tag_settings(config, processor, training_references),
    }
    if config.model_config is not None:
        model = load_source("model_config", config.model_config, lambda path: _new_model(path, values))
    elif config.backbone is not None:
        pretrained = SoliForConditionalGeneration.from_pretrained_backbone
        model = load_source("backbone", config.backbone, lambda source: pretrained(source, **values))
    else:
        model = SoliForConditionalGeneration(SoliConfig(**values))
    suppress_unknown_token(model, tokenizer)
    return model


def suppress_unknown_token(model: PreTrainedModel, tokenizer: Any) -> None:
    """Make `generate()` never pick `<unk>` (`generation_config.suppress_tokens`): a generated `<unk>` is dropped
    when decoding and leaves a broken sentence. The one place that decides it: `build_model` (every new SOLI), the
    AlignCap LSTM's set-up and `scripts/ship_model.py` (a shipped folder) call it. A tokenizer without `<unk>` (a
    byte-level language model's) leaves the setting as it is."""
    if tokenizer.unk_token_id is not None:
        model.generation_config.suppress_tokens = [tokenizer.unk_token_id]


def _new_model(model_config: str, values: dict[str, Any]) -> SoliForConditionalGeneration:
    """A new SOLI (random weights) with the architecture of the SoliConfig JSON `model_config` and `values` on top."""
    architecture = SoliConfig.from_json_file(model_config).to_dict()
    for key in ("auto_map", "custom_pipelines", "transformers_version", "model_type", "inference_branches"):
        architecture.pop(key, None)
    return SoliForConditionalGeneration(SoliConfig(**(architecture | values)))


#: DualQFormerConfig fields that name the pretrained parts: the recipe's `backbone`, `finegrained_encoder` and
#: `language_model` give them, never `model_config`.
_DUAL_QFORMER_PARTS = ("global_encoder_config", "finegrained_encoder_config", "use_finegrained_encoder", "text_config")
#: Keys of a saved config.json that are no settings.
_SAVED_CONFIG_KEYS = ("model_type", "architectures", "auto_map", "custom_pipelines", "transformers_version", "dtype")


def dual_qformer_settings(model_config: str) -> dict[str, Any]:
    """The `DualQFormerConfig` settings of a `model_config` JSON (any subset of the fields, or a saved config.json
    whose parts are then left out); a `ValueError` naming the file for a field that is no setting."""
    return config_settings(model_config, DualQFormerConfig, _DUAL_QFORMER_PARTS)


def config_settings(model_config: str, config_class: type, parts: Sequence[str]) -> dict[str, Any]:
    """The `config_class` settings of a `model_config` JSON, its pretrained `parts` and a saved config.json's
    bookkeeping keys left out; a `ValueError` naming the file for a field that is no setting."""
    values = read_json(Path(model_config))
    name = config_class.__name__
    if not isinstance(values, dict):
        raise ValueError(f"model_config {model_config}: expected a JSON object of {name} settings")
    settings = {key: value for key, value in values.items() if key not in (*parts, *_SAVED_CONFIG_KEYS)}
    unknown = sorted(key for key in settings if not hasattr(config_class(), key))
    if unknown:
        raise ValueError(f"model_config {model_config}: {unknown} are not {name} settings")
    return settings


def build_dual_qformer(config: TrainingConfig) -> tuple[DualQFormerForConditionalGeneration, DualQFormerProcessor]:
    """The dual-encoder Q-Former of the recipe, at its `training_stage`, and its processor.

    `init_from`: a saved dual-encoder Q-Former and its processor (its encoders and language model included);
    `finegrained_encoder: null` drops its fine-grained encoder and Q-Former (the global-only ablation from a
    two-encoder stage 1). Otherwise `from_pretrained_parts`: `backbone` (global encoder), `finegrained_encoder`
    (None: global only), `language_model` (None: SmolLM2-135M-Instruct's GGUF) and its tokenizer, and new Q-Formers
    with the settings of `model_config`.

    Raises:
        ValueError: `init_from` is no dual-encoder Q-Former, or a source cannot be loaded (naming the field).
    """
    stage = {"training_stage": config.training_stage}
    if config.init_from is not None:
        saved_type = load_source("init_from", config.init_from, AutoConfig.from_pretrained).model_type
        if saved_type != "dual_qformer":
            raise ValueError(f"init_from {config.init_from} is a {saved_type!r} model; the recipe trains dual_qformer")
        dropped = {} if config.finegrained_encoder is not None else {"use_finegrained_encoder": False}
        load = DualQFormerForConditionalGeneration.from_pretrained
        model = load_source("init_from", config.init_from, lambda source: load(source, **dropped, **stage))
        return model, load_source("init_from", config.init_from, DualQFormerProcessor.from_pretrained)
    settings = {} if config.model_config is None else dual_qformer_settings(config.model_config)
    return DualQFormerForConditionalGeneration.from_pretrained_parts(
        config.backbone, config.finegrained_encoder, config.language_model, **settings, **stage
    )


#: AlignCapConfig fields that the recipe's parts and fields give, never `model_config`.
_ALIGNCAP_PARTS = ("global_encoder_config", "dense_encoder_config", "text_config", "decoder_type", "vocab_size")
#: Recipe fields that are AlignCapConfig settings of the same name (None: the model's own value).
_ALIGNCAP_SETTINGS = (
    "tag_loss_weight",
    "cond_loss_weight",
    "multi_loss_weight",
    "use_refinement",
    "use_alignment",
    "use_object_evidence",
)


def aligncap_settings(config: TrainingConfig) -> dict[str, Any]:
    """The AlignCapConfig settings of the recipe: `model_config`'s (sizes, ...), then the recipe's own fields
    (`photo_size` is `image_size`)."""
    settings = (
        {} if config.model_config is None else config_settings(config.model_config, AlignCapConfig, _ALIGNCAP_PARTS)
    )
    settings |= {name: getattr(config, name) for name in _ALIGNCAP_SETTINGS if getattr(config, name) is not None}
    if config.photo_size is not None:
        settings["image_size"] = config.photo_size
    return settings


def region_phrases(train_rows: Dataset) -> list[str]:
    """Every phrase of the training regions (one per phrase-box pair)."""
    return [phrase for references in train_rows["references"] for phrase in references]


def build_aligncap(
    config: TrainingConfig, train_rows: Dataset
) -> tuple[AlignCapForConditionalGeneration, AlignCapProcessor]:
    """The AlignCap region captioner of the recipe and its processor.

    `init_from`: a saved AlignCap and its processor (loss weights of the recipe applied). Otherwise
    `from_pretrained_parts`: `backbone` (global encoder), `finegrained_encoder` (DeepLabV3: dense encoder and
    segmenter), the decoder of `decoder_type` (the LSTM with a word-level tokenizer of the training phrases, seen at
    least `vocab_min_frequency` times, or `tokenizer`; or the frozen `language_model`), the `num_tags` tag words of
    the training phrases (`tags.build_tag_vocabulary`; the refinement module needs them), and `aligncap_settings`.

    Raises:
        ValueError: `init_from` is no AlignCap, a source cannot be loaded, or the settings contradict each other
            (e.g. `use_refinement: false` with a tag loss weight), naming the field.
    """
    settings = aligncap_settings(config)
    if config.init_from is not None:
        saved_type = load_source("init_from", config.init_from, AutoConfig.from_pretrained).model_type
        if saved_type != "aligncap":
            raise ValueError(f"init_from {config.init_from} is a {saved_type!r} model; the recipe trains aligncap")
        weights = {name: value for name, value in settings.items() if name.endswith("_loss_weight")}
        load = AlignCapForConditionalGeneration.from_pretrained
        model = load_source("init_from", config.init_from, lambda source: load(source, **weights))
        return model, load_source("init_from", config.init_from, AlignCapProcessor.from_pretrained)
    phrases = region_phrases(train_rows)
    if config.tokenizer is not None:
        words = load_source("tokenizer", config.tokenizer, AutoProcessor.from_pretrained)
        words = getattr(words, "tokenizer", words)
    else:
        words = build_tokenizer(phrases, min_frequency=config.vocab_min_frequency)
    if config.num_tags:
        settings["tag_words"] = build_tag_vocabulary(words, train_rows["references"], config.num_tags)
    try:
        model, processor = AlignCapForConditionalGeneration.from_pretrained_parts(
            config.backbone,
            config.finegrained_encoder,
            decoder_type=config.decoder_type,
            language_model=config.language_model,
            tokenizer=words if config.decoder_type == "lstm" else None,
            **settings,
        )
    except ValueError as error:
        raise ValueError(f"model_type aligncap: {error}") from error
    if config.decoder_type == "lstm":
        suppress_unknown_token(model, words)
    return model, processor


def trainable_parameter_groups(model: PreTrainedModel, config: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW groups: SOLI's pretrained backbone at `backbone_learning_rate`, everything else at `learning_rate`; the
    dual-encoder Q-Former's and AlignCap's trainable weights (not their frozen parts) at `learning_rate`."""
    if config.model_type in ("dual_qformer", "aligncap"):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.learning_rate}]
    backbone = {id(p) for p in model.encoder.backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in backbone]
    return [
        {"params": rest, "lr": config.learning_rate},
        {"params": list(model.encoder.backbone.parameters()), "lr": config.backbone_learning_rate},
    ]
