"""int8 quantization of the exported graphs, `soli export` and `soli caption --onnx` (also without torch)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_python
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'soli-hf[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export(dynamo=True) needs it)")


from soli_hf import cli  # noqa: E402
from soli_hf.onnx import SoliOnnxCaptioner  # noqa: E402
from soli_hf.onnx.quantize import QUANTIZED_OPERATORS, TARGETS, quantize_onnx  # noqa: E402
from soli_hf.onnx.spec import MANIFEST_NAME, QUANTIZATION_TARGETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> tuple[int, str, str]:
    """`soli ARGS` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def saved_model(saved_image_sensitive_model) -> Path:
    """A tiny SOLI whose captions depend on the image, saved with its processor (conftest's)."""
    return saved_image_sensitive_model


@pytest.fixture(scope="module")
def float32_dir(saved_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fp32")
    status, out, err = run_cli("export", "--model", str(saved_model), "--out", str(folder), "--backend", "torch")
    assert status == 0, err
    assert out.count("wrote ") == 3
    return folder


@pytest.fixture(scope="module")
def image_files(images, tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = [folder / f"image{i}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    return paths


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


def test_every_command_line_target_has_settings() -> None:
    assert tuple(TARGETS) == QUANTIZATION_TARGETS


@pytest.mark.parametrize("target", QUANTIZATION_TARGETS)
def test_quantize_onnx_writes_int8_graphs_the_runtime_loads(float32_dir, tmp_path, processor, images, target) -> None:
    written = quantize_onnx(float32_dir, tmp_path, target=target, backend="onnxruntime")
    assert sorted(path.name for path in written) == ["decoder_step.onnx", "encoder.onnx", MANIFEST_NAME]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    quantization = manifest.pop("quantization")
    assert manifest == json.loads((float32_dir / MANIFEST_NAME).read_text())
    assert quantization["name"] == target and quantization["operators"] == list(QUANTIZED_OPERATORS)
    # The decoder's matrix products are int8 with the target's weight type; convolutions stay float32.
    decoder = onnx.load(tmp_path / "decoder_step.onnx")
    initializers = {init.name: init.data_type for init in decoder.graph.initializer}
    weights = [initializers[node.input[1]] for node in decoder.graph.node if node.op_type == "MatMulInteger"]
    expected_type = onnx.TensorProto.INT8 if TARGETS[target].weights_dtype == "QInt8" else onnx.TensorProto.UINT8
    assert weights and set(weights) == {expected_type}
    assert "MatMulInteger" in op_types(tmp_path / "decoder_step.onnx")
    assert "Conv" in op_types(tmp_path / "encoder.onnx") and "ConvInteger" not in op_types(tmp_path / "encoder.onnx")
    # ... and the LSTM's product over [embedding; context] stays float32, by name.
    (kept,) = quantization["float32_nodes"]["decoder_step"]
    assert {node.name: node.op_type for node in decoder.graph.node}[kept] == "MatMul"
    # The int8 decoder step approximates the float32 one.
    fp32, int8 = SoliOnnxCaptioner(float32_dir, num_threads=1), SoliOnnxCaptioner(tmp_path, num_threads=1)
    pixel_values = fp32.preprocess(images)
    start = np.full(len(images), fp32.generation.decoder_start_token_id)
    expected = fp32.decoder_session(fp32.encode(pixel_values)).step(start)
    actual = int8.decoder_session(int8.encode(pixel_values)).step(start)
    assert np.abs(np.exp(actual) - np.exp(expected)).max() < 0.05
    assert len(int8.caption(images)) == len(images)


def test_quantize_onnx_rejects_bad_arguments(float32_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="target must be one of"):
        quantize_onnx(float32_dir, tmp_path, target="riscv")
    with pytest.raises(ValueError, match="backend must be one of"):
        quantize_onnx(float32_dir, tmp_path, backend="tensorrt")
    with pytest.raises(ValueError, match="must differ"):
        quantize_onnx(float32_dir, float32_dir)
    with pytest.raises(ValueError, match="no soli_onnx.json"):
        quantize_onnx(tmp_path, tmp_path / "out")
    quantize_onnx(float32_dir, tmp_path / "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_onnx(tmp_path / "int8", tmp_path / "twice")


def test_soli_export_quantize_and_caption_onnx(saved_model, float32_dir, image_files, tmp_path) -> None:
    status, out, err = run_cli("export", "--model", str(saved_model), "--out", str(tmp_path), "--quantize", "arm64")
    assert status == 0, err
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["quantization"]["name"] == "arm64"
    for folder in (float32_dir, tmp_path):
        status, out, err = run_cli(
            "caption", *map(str, image_files), "--onnx", str(folder), "--json", "--num-beams", "2"
        )
        assert status == 0, err
        expected = SoliOnnxCaptioner(folder).caption(image_files, num_beams=2)  # the manifest's max_new_tokens
        assert [json.loads(line)["caption"] for line in out.splitlines()] == expected  # JSON Lines
    status, _, err = run_cli("caption", str(image_files[0]), "--onnx", str(tmp_path), "--model", str(saved_model))
    assert status == 2 and "not both" in err
    status, _, err = run_cli("caption", str(image_files[0]), "--onnx", str(tmp_path / "missing"))
    assert status == 2 and "no soli_onnx.json" in err
    status, _, err = run_cli("export", "--model", str(tmp_path), "--out", str(tmp_path / "x"))
    assert status == 2 and "not a saved captioner folder" in err


@pytest.mark.slow
def test_soli_caption_onnx_without_torch(float32_dir, image_files, tmp_path) -> None:
    """`soli caption --onnx` where torch and transformers cannot be imported: same captions, neither loaded."""
    script = f"""
import contextlib, io, json, sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
sys.path.insert(0, {str(ROOT)!r})
from soli_hf import cli
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = cli.main(["caption", *sys.argv[2:], "--onnx", sys.argv[1], "--json"])
loaded = [name for name, module in sys.modules.items() if module is not None and name.split(".")[0] in
          ("torch", "transformers")]
print(json.dumps({{"status": status, "captions": [json.loads(line)["caption"] for line in out.getvalue().splitlines()],
                  "loaded": loaded}}))
"""
    result = run_python(script, str(float32_dir), *map(str, image_files), cwd=tmp_path)
    assert result["status"] == 0 and result["loaded"] == []
    assert result["captions"] == SoliOnnxCaptioner(float32_dir).caption(image_files)  # the manifest's decoding
