"""The Optimum route of the ONNX export (optimum-onnx's `main_export` on transformers 4.57, in the overlay that
`make install` builds) against the torch.onnx route (this environment): the same folder, graphs with the same
inputs and outputs, and captions equal to `generate()` token for token in the same `SoliOnnxCaptioner`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from conftest import image_sensitive_tiny_model, run_python

pytestmark = pytest.mark.slow  # a second transformers stack in subprocesses: half a minute and more

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'soli-hf[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export(dynamo=True) needs it)")

from soli_hf.onnx import spec  # noqa: E402
from soli_hf.onnx.export import export_onnx, optimum_exporter_missing  # noqa: E402
from soli_hf.onnx.runtime import SoliOnnxCaptioner  # noqa: E402

OPTIMUM_PATH = Path(sys.prefix) / "optimum-onnx"
COMPAT_PATH = Path(sys.prefix) / "compat-transformers-4.57"

# Exports a saved folder with backend="auto" (Optimum there) and the same model as an object with
# backend="optimum", counting the calls of Optimum's `main_export`.
SCRIPT = """
import json, sys
import optimum.exporters.onnx
import transformers
from soli_hf import SoliForConditionalGeneration, SoliProcessor
from soli_hf.onnx import optimum_export
from soli_hf.onnx.export import export_onnx
from soli_hf.onnx.quantize import quantize_onnx

calls = []
def counted_main_export(*args, **kwargs):
    calls.append(kwargs["task"])
    return optimum.exporters.onnx.main_export(*args, **kwargs)

optimum_export.main_export = counted_main_export
saved, from_folder, from_object, quantized = sys.argv[1:]
written = export_onnx(saved, from_folder)
model = SoliForConditionalGeneration.from_pretrained(saved)
export_onnx(model, from_object, processor=SoliProcessor.from_pretrained(saved), backend="optimum")
quantize_onnx(from_folder, quantized, target="arm64")  # backend="auto": Optimum's ORTQuantizer here
print(json.dumps({
    "transformers": transformers.__version__,
    "optimum": optimum.exporters.onnx.__file__,
    "main_export_calls": len(calls),
    "written": [path.name for path in written],
}))
"""


@pytest.fixture(scope="module")
def routes(tokenizer, processor, tmp_path_factory) -> dict:
    """The tiny model, and its exports by both routes (Optimum: from the folder and from the model object)."""
    if not (OPTIMUM_PATH.is_dir() and COMPAT_PATH.is_dir()):
        pytest.skip(f"{OPTIMUM_PATH} or {COMPAT_PATH} is missing (`make install` creates them)")
    model = image_sensitive_tiny_model(tokenizer, "both")
    root = tmp_path_factory.mktemp("optimum_route")
    saved = root / "saved"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    folders = {name: root / name for name in ("torch", "optimum", "optimum_from_object")}
    result = run_python(
        SCRIPT,
        str(saved),
        str(folders["optimum"]),
        str(folders["optimum_from_object"]),
        str(root / "optimum_int8"),
        cwd=root,
        extra_env={"PYTHONPATH": f"{OPTIMUM_PATH}:{COMPAT_PATH}"},
    )
    export_onnx(saved, folders["torch"])  # backend="auto": torch.onnx, Optimum's exporter is not importable here
    return {"model": model, "folders": folders, "subprocess": result, "int8": root / "optimum_int8"}


def test_optimum_route_ran_main_export_under_transformers_4_57(routes) -> None:
    result = routes["subprocess"]
    assert result["transformers"].startswith("4.57.")
    assert result["optimum"].startswith(str(OPTIMUM_PATH))
    assert result["main_export_calls"] == 2
    assert result["written"] == [graph.file_name for graph in spec.GRAPHS] + [spec.MANIFEST_NAME]
    for name, folder in routes["folders"].items():
        manifest = json.loads((folder / spec.MANIFEST_NAME).read_text())
        assert manifest["exporter"] == ("torch" if name == "torch" else "optimum")


def test_both_routes_write_the_same_folder_and_graph_interfaces(routes) -> None:
    folders = routes["folders"]
    reference = folders["torch"]
    expected_files = sorted(path.name for path in reference.iterdir())
    assert expected_files == sorted([graph.file_name for graph in spec.GRAPHS] + [spec.MANIFEST_NAME])
    expected = SoliOnnxCaptioner(reference, num_threads=1)
    for folder in folders.values():
        assert sorted(path.name for path in folder.iterdir()) == expected_files
        captioner = SoliOnnxCaptioner(folder, num_threads=1)
        for graph in spec.GRAPHS:
            actual_session, expected_session = captioner.sessions[graph.key], expected.sessions[graph.key]
            for kind in ("get_inputs", "get_outputs"):
                actual = [(t.name, t.type, t.shape) for t in getattr(actual_session, kind)()]
                assert actual == [(t.name, t.type, t.shape) for t in getattr(expected_session, kind)()]
        manifest = json.loads((folder / spec.MANIFEST_NAME).read_text())
        assert manifest == {**expected.manifest, "exporter": manifest["exporter"]}


@pytest.mark.parametrize("num_beams", [1, 3])
def test_optimum_export_captions_equal_generate_and_the_torch_route(routes, processor, images, num_beams) -> None:
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = routes["model"].generate(pixel_values=pixel_values, num_beams=num_beams)
    assert len({tuple(row) for row in expected.tolist()}) >= 3, "the test needs image-dependent captions"
    captions = processor.batch_decode(expected, skip_special_tokens=True)
    for folder in routes["folders"].values():
        captioner = SoliOnnxCaptioner(folder, num_threads=1)
        np.testing.assert_array_equal(captioner.generate(pixel_values.numpy(), num_beams=num_beams), expected.numpy())
        assert captioner.caption(images, num_beams=num_beams) == captions


def test_optimum_quantizer_gives_the_weights_of_onnxruntime_quantize_dynamic(routes, images, tmp_path) -> None:
    """`quantize_onnx` through Optimum's `ORTQuantizer` + `AutoQuantizationConfig.arm64` (in the overlay) and
    through `onnxruntime.quantization` (here) apply the same settings: the same int8 weights and captions."""
    from soli_hf.onnx.quantize import quantize_onnx

    optimum_int8 = routes["int8"]
    assert json.loads((optimum_int8 / spec.MANIFEST_NAME).read_text())["quantization"]["backend"] == "optimum"
    quantize_onnx(routes["folders"]["optimum"], tmp_path, target="arm64", backend="onnxruntime")
    for graph in spec.GRAPHS:
        weights = [
            {
                init.name: onnx.numpy_helper.to_array(init)
                for init in onnx.load(folder / graph.file_name).graph.initializer
            }
            for folder in (optimum_int8, tmp_path)
        ]
        assert weights[0].keys() == weights[1].keys() and any(name.endswith("_quantized") for name in weights[0])
        for name, values in weights[0].items():
            np.testing.assert_array_equal(values, weights[1][name])
    captions = [SoliOnnxCaptioner(folder, num_threads=1).caption(images) for folder in (optimum_int8, tmp_path)]
    assert captions[0] == captions[1]


def test_optimum_backend_without_optimum_names_what_is_missing(tiny_model, processor, tmp_path) -> None:
    if optimum_exporter_missing() is None:
        pytest.skip("Optimum's ONNX exporter is importable in this environment")
    with pytest.raises(ValueError, match="optimum-onnx 0.1.0 .* cannot be imported: No module named 'optimum'"):
        export_onnx(tiny_model, tmp_path, processor=processor, backend="optimum")
    with pytest.raises(ValueError, match="backend must be one of"):
        export_onnx(tiny_model, tmp_path, processor=processor, backend="onnxscript")
