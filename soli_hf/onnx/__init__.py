"""SOLI on ONNX: export with torch (or Optimum), caption with numpy + pillow + onnxruntime only.

- `soli_hf.onnx.export.export_onnx(model_dir_or_model, out_dir)` writes `encoder.onnx`, `decoder_step.onnx`
  and `soli_onnx.json` (needs torch, transformers, onnx and onnxscript).
- `soli_hf.onnx.SoliOnnxCaptioner(onnx_dir).caption(images)` reproduces `generate()` (greedy or beam search) on
  those graphs; importing it loads neither torch nor transformers.
- `soli_hf.onnx.spec`: the graphs' input and output names and shapes, shared by every export route.
- `soli_hf.onnx.folder`: an export (and `quantize_onnx`) replaces its folder whole or not at all, and refuses a
  folder holding other files; `soli_hf.onnx.manifest`: `soli_onnx.json` written (from a model and its
  processor), read and checked, key by key; `soli_hf.onnx.cpus`: the CPUs the process may use, the runtime's
  default thread count.

`SoliOnnxCaptioner` is imported on first use, so that the standard-library modules (`spec`, `manifest`, `cpus`)
import where onnxruntime is not installed (`soli_hf.captioner` reads `manifest.preprocessing_settings`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import SoliOnnxCaptioner

__all__ = ["SoliOnnxCaptioner"]


def __getattr__(name: str) -> Any:
    """`SoliOnnxCaptioner`, imported from `runtime` (and onnxruntime) when first asked for."""
    if name == "SoliOnnxCaptioner":
        from .runtime import SoliOnnxCaptioner

        return SoliOnnxCaptioner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
