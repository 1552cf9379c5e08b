"""What a training run starts from: the processor (tokenizer built or loaded) and the model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers import AutoProcessor

from ..configuration_soli import SoliConfig
from ..image_processing_soli import SoliImageProcessor
from ..modeling_soli import SoliForConditionalGeneration
from ..processing_soli import SoliProcessor
from ..tokenization_soli import build_tokenizer
from .config import TrainingConfig


def build_processor(config: TrainingConfig, training_captions: Iterable[str]) -> SoliProcessor:
    """The processor of `init_from` or `tokenizer` when given; otherwise a new tokenizer built from the training
    captions (words seen at least `vocab_min_frequency` times) and the default image processor."""
    source = config.init_from or config.tokenizer
    if source is not None:
        loaded = AutoProcessor.from_pretrained(source)
        if isinstance(loaded, SoliProcessor):
            return loaded
        return SoliProcessor(image_processor=SoliImageProcessor(), tokenizer=loaded)
    tokenizer = build_tokenizer(training_captions, min_frequency=config.vocab_min_frequency)
    return SoliProcessor(image_processor=SoliImageProcessor(), tokenizer=tokenizer)


def _loss_overrides(config: TrainingConfig) -> dict[str, Any]:
    names = ("contrastive_weight", "sr_loss_weight", "label_smoothing")
    return {name: getattr(config, name) for name in names if getattr(config, name) is not None}


def build_model(config: TrainingConfig, processor: SoliProcessor) -> SoliForConditionalGeneration:
    """`init_from` (a saved SOLI) when given; else a new SOLI (or baseline) with the pretrained backbone, sized
    to the tokenizer's vocabulary, and the architecture of `model_config` when given."""
    overrides = _loss_overrides(config)
    if config.init_from is not None:
        model = SoliForConditionalGeneration.from_pretrained(config.init_from)
        for name, value in overrides.items():
            setattr(model.config, name, value)
        return model
    tokenizer = processor.tokenizer
    values: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_sr_branch": config.model_variant == "soli",
        **overrides,
    }
    if config.model_config is not None:
        architecture = SoliConfig.from_json_file(config.model_config).to_dict()
        for key in ("auto_map", "custom_pipelines", "transformers_version", "model_type", "inference_branches"):
            architecture.pop(key, None)
        values = architecture | values
    if config.backbone is not None and config.model_config is None:
        model = SoliForConditionalGeneration.from_pretrained_backbone(config.backbone, **values)
    else:
        model = SoliForConditionalGeneration(SoliConfig(**values))
    # A generated <unk> is dropped when decoding and leaves a broken sentence: generate() never picks it.
    model.generation_config.suppress_tokens = [tokenizer.unk_token_id]
    return model


def trainable_parameter_groups(model: SoliForConditionalGeneration, config: TrainingConfig) -> list[dict[str, Any]]:
    """AdamW groups: the pretrained backbone at `backbone_learning_rate`, everything else at `learning_rate`."""
    backbone = {id(p) for p in model.encoder.backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in backbone]
    return [
        {"params": rest, "lr": config.learning_rate},
        {"params": list(model.encoder.backbone.parameters()), "lr": config.backbone_learning_rate},
    ]
