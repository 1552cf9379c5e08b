"""soli-hf: SOLI, a lightweight captioner for low-resolution images, as a HuggingFace-native package.

Importing `soli_hf` registers SOLI with transformers' Auto classes and pipelines (see `registration.py`).
"""

from .configuration_soli import SoliConfig
from .image_processing_soli import SoliImageProcessor
from .modeling_soli import SoliForConditionalGeneration, SoliPreTrainedModel
from .processing_soli import SoliProcessor
from .registration import register_soli
from .tokenization_soli import build_tokenizer

register_soli()

__all__ = [
    "SoliConfig",
    "SoliForConditionalGeneration",
    "SoliImageProcessor",
    "SoliPreTrainedModel",
    "SoliProcessor",
    "build_tokenizer",
    "register_soli",
]
__version__ = "0.1.0"
