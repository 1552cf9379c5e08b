"""The measuring and reporting wing: latency and its peers, FLOPs and ONNX profiles, the ARM check, the metric
speed benchmark, and the writers of Markdown tables, plots, HTML galleries and model cards.

Everything here takes a `soli_hf.captioner.Captioner` or a saved model; nothing in the model files, `data/`,
`metrics/` or `onnx/` imports this wing (see ARCHITECTURE.md).
"""
