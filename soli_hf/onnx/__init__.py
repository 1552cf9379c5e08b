"""SOLI on ONNX: export with torch (or Optimum), caption with numpy + pillow + onnxruntime only.

- `soli_hf.onnx.export.export_onnx(model_dir_or_model, out_dir)` writes `encoder.onnx`, `decoder_step.onnx`
  and `soli_onnx.json` (needs torch, transformers, onnx and onnxscript).
- `soli_hf.onnx.SoliOnnxCaptioner(onnx_dir).caption(images)` reproduces `generate()` (greedy or beam search) on
  those graphs; importing it loads neither torch nor transformers.
- `soli_hf.onnx.spec`: the graphs' input and output names and shapes, shared by every export route.
- `soli_hf.onnx.folder`: an export (and `quantize_onnx`) replaces its folder whole or not at all, and refuses a
  folder holding other files; `soli_hf.onnx.manifest`: `soli_onnx.json` read and checked, key by key;
  `soli_hf.onnx.cpus`: the CPUs the process may use, the runtime's default thread count.
"""

from .runtime import SoliOnnxCaptioner

__all__ = ["SoliOnnxCaptioner"]
