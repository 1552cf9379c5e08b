"""Registration of the captioner families (SOLI, the dual-encoder Q-Former, the AlignCap region captioner) with
transformers' Auto classes, `register_for_auto_class` and pipelines."""

from __future__ import annotations

import logging

import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_aligncap import AlignCapConfig
from .configuration_dual_qformer import DualQFormerConfig
from .configuration_soli import SoliConfig
from .image_processing_soli import SoliImageProcessor
from .modeling_aligncap import AlignCapForConditionalGeneration
from .modeling_dual_qformer import DualQFormerForConditionalGeneration
from .modeling_soli import SoliForConditionalGeneration
from .pipeline_aligncap import TASK as REGION_TO_TEXT
from .pipeline_aligncap import AlignCapRegionToTextPipeline
from .pipeline_dual_qformer import DualQFormerImageTextToTextPipeline
from .pipeline_soli import SoliImageTextToTextPipeline
from .processing_aligncap import AlignCapProcessor
from .processing_dual_qformer import DualQFormerProcessor
from .processing_soli import SoliProcessor


def register_soli() -> None:
    """Make the Auto classes resolve `model_type="soli"` to SOLI's classes (idempotent).

    Also marks the classes with `register_for_auto_class`, so that `save_pretrained` copies their code next to
    the weights and writes `auto_map`: such a folder loads with `trust_remote_code=True` without soli_hf.
    """
    _register_family("soli", SoliConfig, SoliForConditionalGeneration, SoliProcessor)
    AutoTokenizer.register(SoliConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)
    SoliImageProcessor.register_for_auto_class("AutoImageProcessor")

    # transformers 5 maps "image-to-text" onto "image-text-to-text"; SOLI's subclass of that pipeline captions
    # without a prompt and defers to the built-in behaviour for every other model.
    PIPELINE_REGISTRY.supported_tasks["image-text-to-text"]["impl"] = SoliImageTextToTextPipeline
    _repair_task_redirect_warning()


def register_dual_qformer() -> None:
    """Make the Auto classes resolve `model_type="dual_qformer"` to the dual-encoder Q-Former captioner's classes
    (idempotent), mark them for `save_pretrained`'s code copy and `auto_map`, and serve the family in the
    image-to-text pipeline (a subclass of SOLI's, which still serves SOLI and defers for other models)."""
    _register_family("dual_qformer", DualQFormerConfig, DualQFormerForConditionalGeneration, DualQFormerProcessor)
    PIPELINE_REGISTRY.supported_tasks["image-text-to-text"]["impl"] = DualQFormerImageTextToTextPipeline
    _repair_task_redirect_warning()


def register_aligncap() -> None:
    """Make the Auto classes resolve `model_type="aligncap"` to the AlignCap region captioner's classes
    (idempotent), mark them for `save_pretrained`'s code copy and `auto_map`, and register its `region-to-text`
    pipeline (a task of its own: a photo and boxes in, one phrase per box out; see `pipeline_aligncap.py`)."""
    _register_family("aligncap", AlignCapConfig, AlignCapForConditionalGeneration, AlignCapProcessor)
    PIPELINE_REGISTRY.register_pipeline(
        REGION_TO_TEXT,
        pipeline_class=AlignCapRegionToTextPipeline,
        pt_model=AutoModelForImageTextToText,
        type="multimodal",
    )


def _register_family(model_type: str, config_class: type, model_class: type, processor_class: type) -> None:
    """A family's config, model (AutoModel, AutoModelForImageTextToText), SOLI's image processor and its processor
    with the Auto classes, and the classes marked with `register_for_auto_class`, so that `save_pretrained` copies
    their code next to the weights and writes `auto_map` (idempotent)."""
    AutoConfig.register(model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, model_class, exist_ok=True)
    AutoModelForImageTextToText.register(config_class, model_class, exist_ok=True)
    _register_image_processor(config_class)
    AutoProcessor.register(config_class, processor_class, exist_ok=True)

    config_class.register_for_auto_class()
    model_class.register_for_auto_class("AutoModel")
    model_class.register_for_auto_class("AutoModelForImageTextToText")
    processor_class.register_for_auto_class("AutoProcessor")


def _register_image_processor(config_class: type) -> None:
    """SOLI's image processor for a family's config; it works on PIL images whichever backend transformers asks
    for."""
    if int(transformers.__version__.split(".")[0]) >= 5:
        backends = {"pil": SoliImageProcessor, "torchvision": SoliImageProcessor}
        AutoImageProcessor.register(config_class, image_processor_classes=backends, exist_ok=True)
    else:  # transformers 4.x (Optimum's ONNX exporter runs on 4.57): one "slow" image processor
        AutoImageProcessor.register(config_class, slow_image_processor_class=SoliImageProcessor, exist_ok=True)


class _TaskRedirectWarningRepair(logging.Filter):
    """transformers 5.23 logs the "image-to-text" redirect with a stray argument, which makes `logging` print a
    formatting error and a stack trace; drop the argument so the message prints as intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("The task `image-to-text`"):
            record.args = ()
        return True


def _repair_task_redirect_warning() -> None:
    pipelines_logger = logging.getLogger("transformers.pipelines")
    if not any(isinstance(existing, _TaskRedirectWarningRepair) for existing in pipelines_logger.filters):
        pipelines_logger.addFilter(_TaskRedirectWarningRepair())
