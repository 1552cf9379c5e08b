"""The SOLI artifacts the benchmarks time: for each inference mode of a saved model, the folder itself (PyTorch)
and its fp32, int8 (dynamic) and, given calibration photos, static and fast int8 ONNX exports and, for "lr", the
compact one (10 MB). Needs torch (the export)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .latency import BACKENDS, ORT_FP32, ORT_INT8, ORT_INT8_COMPACT, ORT_INT8_FAST, ORT_INT8_STATIC, PYTORCH


def inference_modes(model_dir: Path) -> tuple[str, ...]:
    """The `inference_branches` a saved SOLI has: "both" and "lr", or "lr" alone without the SR branch."""
    from ..configuration_soli import SoliConfig

    return ("both", "lr") if SoliConfig.from_pretrained(model_dir).use_sr_branch else ("lr",)


def export_soli(
    model_dir: Path, modes: Sequence[str], folder: Path, calibration: Sequence[str] = ()
) -> dict[tuple[str, str], Path]:
    """The artifact of each (backend, inference mode): the model folder for PyTorch, fp32 and int8 ("arm64", the
    deployed settings) ONNX exports written under `folder`, and static and fast int8 ones (and compact for "lr",
    the mode made for it) calibrated on the photos `calibration` when there are any."""
    from ..modeling_soli import SoliForConditionalGeneration
    from ..onnx.export import export_onnx
    from ..onnx.quantize import quantize_onnx
    from ..processing_soli import SoliProcessor

    processor = SoliProcessor.from_pretrained(model_dir)
    artifacts: dict[tuple[str, str], Path] = {}
    for mode in modes:
        artifacts[PYTORCH, mode] = model_dir
        model = SoliForConditionalGeneration.from_pretrained(model_dir, inference_branches=mode).eval()
        artifacts[ORT_FP32, mode], artifacts[ORT_INT8, mode] = (
            folder / f"{ORT_FP32}-{mode}",
            folder / f"{ORT_INT8}-{mode}",
        )
        export_onnx(model, artifacts[ORT_FP32, mode], processor=processor)
        quantize_onnx(artifacts[ORT_FP32, mode], artifacts[ORT_INT8, mode], target="arm64")
        calibrated = {ORT_INT8_STATIC: "static", ORT_INT8_FAST: "fast"} if calibration else {}
        if calibration and mode == "lr":
            calibrated[ORT_INT8_COMPACT] = "compact"
        for backend, quantization_mode in calibrated.items():
            artifacts[backend, mode] = folder / f"{backend}-{mode}"
            quantize_onnx(
                artifacts[ORT_FP32, mode],
                artifacts[backend, mode],
                target="arm64",
                mode=quantization_mode,
                calibration=calibration,
            )
    return dict(sorted(artifacts.items(), key=lambda item: BACKENDS.index(item[0][0])))  # backend by backend
