"""soli-hf: SOLI, a lightweight captioner for low-resolution images, as a HuggingFace-native package.

Importing `soli_hf` registers its captioner families (SOLI, the dual-encoder Q-Former captioner and the AlignCap
region captioner) with transformers' Auto classes and pipelines (see `registration.py`).

The ONNX runtime (`soli_hf.onnx.SoliOnnxCaptioner`) needs only numpy, pillow and onnxruntime. Where torch or
transformers is not installed, or `SOLI_HF_NO_TORCH=1` is set, `import soli_hf` loads neither and the PyTorch
classes below are not defined: that is how a small device runs the exported model.
"""

import os
from importlib.util import find_spec

__version__ = "0.1.0"


def _pytorch_stack_available() -> bool:
    """True when torch and transformers are importable and `SOLI_HF_NO_TORCH` is not set."""
    if os.environ.get("SOLI_HF_NO_TORCH", "0") not in ("", "0"):
        return False
    return find_spec("torch") is not None and find_spec("transformers") is not None


if _pytorch_stack_available():
    from .configuration_aligncap import AlignCapConfig
    from .configuration_dual_qformer import DualQFormerConfig, smollm2_gguf_file
    from .configuration_soli import SoliConfig
    from .image_processing_soli import SoliImageProcessor
    from .modeling_aligncap import AlignCapForConditionalGeneration, AlignCapPreTrainedModel
    from .modeling_dual_qformer import DualQFormerForConditionalGeneration, DualQFormerPreTrainedModel
    from .modeling_soli import SoliForConditionalGeneration, SoliPreTrainedModel
    from .processing_aligncap import AlignCapProcessor
    from .processing_dual_qformer import DualQFormerProcessor
    from .processing_soli import SoliProcessor
    from .registration import register_aligncap, register_dual_qformer, register_soli
    from .tokenization_soli import build_tokenizer

    register_soli()
    register_dual_qformer()
    register_aligncap()

    __all__ = [
        "AlignCapConfig",
        "AlignCapForConditionalGeneration",
        "AlignCapPreTrainedModel",
        "AlignCapProcessor",
        "DualQFormerConfig",
        "DualQFormerForConditionalGeneration",
        "DualQFormerPreTrainedModel",
        "DualQFormerProcessor",
        "SoliConfig",
        "SoliForConditionalGeneration",
        "SoliImageProcessor",
        "SoliPreTrainedModel",
        "SoliProcessor",
        "build_tokenizer",
        "register_aligncap",
        "register_dual_qformer",
        "register_soli",
        "smollm2_gguf_file",
    ]
else:
    __all__ = []
