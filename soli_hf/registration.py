"""Registration of SOLI with transformers' Auto classes, `register_for_auto_class` and pipelines."""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from .configuration_soli import SoliConfig
from .image_processing_soli import SoliImageProcessor
from .modeling_soli import SoliForConditionalGeneration
from .processing_soli import SoliProcessor


def register_soli() -> None:
    """Make the Auto classes resolve `model_type="soli"` to SOLI's classes (idempotent).

    Also marks the classes with `register_for_auto_class`, so that `save_pretrained` copies their code next to
    the weights and writes `auto_map`: such a folder loads with `trust_remote_code=True` without soli_hf.
    """
    AutoConfig.register("soli", SoliConfig, exist_ok=True)
    AutoModel.register(SoliConfig, SoliForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(SoliConfig, SoliForConditionalGeneration, exist_ok=True)
    AutoImageProcessor.register(SoliConfig, slow_image_processor_class=SoliImageProcessor, exist_ok=True)
    AutoProcessor.register(SoliConfig, SoliProcessor, exist_ok=True)
    AutoTokenizer.register(SoliConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)

    SoliConfig.register_for_auto_class()
    SoliForConditionalGeneration.register_for_auto_class("AutoModel")
    SoliForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    SoliImageProcessor.register_for_auto_class("AutoImageProcessor")
    SoliProcessor.register_for_auto_class("AutoProcessor")
