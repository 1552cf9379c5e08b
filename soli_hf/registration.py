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
    AutoConfig.register("soli", SoliConfig, exist_ok=True)
    AutoModel.register(SoliConfig, SoliForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(SoliConfig, SoliForConditionalGeneration, exist_ok=True)
    _register_image_processor(SoliConfig)
    AutoProcessor.register(SoliConfig, SoliProcessor, exist_ok=True)
    AutoTokenizer.register(SoliConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)

    SoliConfig.register_for_auto_class()
    SoliForConditionalGeneration.register_for_auto_class("AutoModel")
    SoliForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    SoliImageProcessor.register_for_auto_class("AutoImageProcessor")
    SoliProcessor.register_for_auto_class("AutoProcessor")

    # transformers 5 maps "image-to-text" onto "image-text-to-text"; SOLI's subclass of that pipeline captions
    # without a prompt and defers to the built-in behaviour for every other model.
    PIPELINE_REGISTRY.supported_tasks["image-text-to-text"]["impl"] = SoliImageTextToTextPipeline
    _repair_task_redirect_warning()


def register_dual_qformer() -> None:
    """Make the Auto classes resolve `model_type="dual_qformer"` to the dual-encoder Q-Former captioner's classes
    (idempotent), mark them for `save_pretrained`'s code copy and `auto_map`, and serve the family in the
    image-to-text pipeline (a subclass of SOLI's, which still serves SOLI and defers for other models)."""
    AutoConfig.register("dual_qformer", DualQFormerConfig, exist_ok=True)
    AutoModel.register(DualQFormerConfig, DualQFormerForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(DualQFormerConfig, DualQFormerForConditionalGeneration, exist_ok=True)
    _register_image_processor(DualQFormerConfig)
    AutoProcessor.register(DualQFormerConfig, DualQFormerProcessor, exist_ok=True)

    DualQFormerConfig.register_for_auto_class()
    DualQFormerForConditionalGeneration.register_for_auto_class("AutoModel")
    DualQFormerForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    DualQFormerProcessor.register_for_auto_class("AutoProcessor")

    PIPELINE_REGISTRY.supported_tasks["image-text-to-text"]["impl"] = DualQFormerImageTextToTextPipeline
    _repair_task_redirect_warning()


def register_aligncap() -> None:
    """Make the Auto classes resolve `model_type="aligncap"` to the AlignCap region captioner's classes
    (idempotent), mark them for `save_pretrained`'s code copy and `auto_map`, and register its `region-to-text`
    pipeline (a task of its own: a photo and boxes in, one phrase per box out; see `pipeline_aligncap.py`)."""
    AutoConfig.register("aligncap", AlignCapConfig, exist_ok=True)
    AutoModel.register(AlignCapConfig, AlignCapForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(AlignCapConfig, AlignCapForConditionalGeneration, exist_ok=True)
    _register_image_processor(AlignCapConfig)
    AutoProcessor.register(AlignCapConfig, AlignCapProcessor, exist_ok=True)

    AlignCapConfig.register_for_auto_class()
    AlignCapForConditionalGeneration.register_for_auto_class("AutoModel")
    AlignCapForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    AlignCapProcessor.register_for_auto_class("AutoProcessor")

    PIPELINE_REGISTRY.register_pipeline(
        REGION_TO_TEXT,
        pipeline_class=AlignCapRegionToTextPipeline,
        pt_model=AutoModelForImageTextToText,
        type="multimodal",
    )


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
