"""ONNX export of SOLI and a runtime that captions with onnxruntime, without torch or transformers.

- `soli_hf.onnx.export.export_onnx(model_dir_or_model, out_dir)` writes `encoder.onnx`, `decoder_step.onnx`,
  `soli_onnx.json` and a copy of the runtime (needs torch, transformers, onnx and onnxscript).
- `soli_hf.onnx.runtime.SoliOnnxCaptioner(onnx_dir).caption(images)` reproduces `generate()` (greedy or beam
  search) on those graphs (needs only numpy, pillow and onnxruntime).
- `soli_hf.onnx.spec`: the graphs' input and output names and shapes, shared by both.

Nothing is imported here: `import soli_hf` itself loads torch, so a torch-free process loads the runtime file
directly (the copy that `export_onnx` writes beside the graphs, or this package's `runtime.py`).
"""
