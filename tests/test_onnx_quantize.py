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
from soli_hf.onnx.manifest import graph_files  # noqa: E402
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


def folder_bytes(folder: Path) -> int:
    """The bytes of an export folder's graphs and their weights file."""
    return sum((folder / name).stat().st_size for name in graph_files(json.loads((folder / MANIFEST_NAME).read_text())))


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
    # ... every one of them: the LSTM's input product comes split in two (word, context), each with its own scale,
    # so none stays float32 (a folder exported before the split keeps the product over their concatenation).
    assert quantization["float32_nodes"]["decoder_step"] == []
    float_products = [node for node in decoder.graph.node if node.op_type == "MatMul"]
    assert all(node.input[1] not in initializers for node in float_products)  # left: attention weights x memory
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


# --- static int8: the encoder calibrated (QDQ), the decoder step dynamic ------------------------------------------


def test_the_export_folds_the_batch_norms_and_the_branches_share_the_weights(float32_dir) -> None:
    encoder = onnx.load(float32_dir / "encoder.onnx")
    assert "BatchNormalization" not in op_types(float32_dir / "encoder.onnx")
    weights = [node.input[1] for node in encoder.graph.node if node.op_type == "Conv"]
    # The tiny model runs both branches through one backbone: its convolutions appear twice, their weights once.
    assert len(set(weights)) < len(weights)


def test_the_exported_graphs_carry_no_exporter_debug_metadata(float32_dir) -> None:
    for name in ("encoder.onnx", "decoder_step.onnx"):
        graph = onnx.load(float32_dir / name).graph
        assert graph.node and not any(node.metadata_props for node in graph.node)


def test_static_quantization_writes_qdq_convolutions_that_run_as_qlinearconv(float32_dir, tmp_path, images) -> None:
    from soli_hf.bench.onnx_profile import operator_times
    from soli_hf.onnx.quantize import STATIC_OPERATORS

    quantize_onnx(float32_dir, tmp_path, target="avx512", mode="static", calibration=images, backend="onnxruntime")
    quantization = json.loads((tmp_path / MANIFEST_NAME).read_text())["quantization"]
    assert quantization["mode"] == "static" and quantization["name"] == "avx512"
    assert quantization["graphs"]["encoder"] == {
        "mode": "static",
        "format": "QDQ",
        "operators": list(STATIC_OPERATORS),
        "calibration": {"images": len(images), "method": "MinMax"},
        "backend": "onnxruntime",
    }
    assert quantization["graphs"]["decoder_step"]["mode"] == "dynamic"
    encoder = onnx.load(tmp_path / "encoder.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= op_types(tmp_path / "encoder.onnx")
    # Every convolution weight is stored once, int8, per output channel, however many convolutions use it.
    initializers = {init.name: init for init in encoder.graph.initializer}
    producers = {output: node for node in encoder.graph.node for output in node.output}
    conv_weights = {producers[node.input[1]].input[0] for node in encoder.graph.node if node.op_type == "Conv"}
    assert {initializers[name].data_type for name in conv_weights} == {onnx.TensorProto.INT8}
    assert len(conv_weights) < sum(node.op_type == "Conv" for node in encoder.graph.node)
    assert "MatMulInteger" in op_types(tmp_path / "decoder_step.onnx")
    # onnxruntime runs the convolutions as int8 kernels (its own profile), and the int8 encoder approximates fp32.
    fp32, int8 = SoliOnnxCaptioner(float32_dir, num_threads=1), SoliOnnxCaptioner(tmp_path, num_threads=1)
    pixel_values = fp32.preprocess(images)
    kernels = operator_times(tmp_path / "encoder.onnx", {"pixel_values": pixel_values}, threads=1, runs=1)
    assert "QLinearConv" in kernels and "Conv" not in kernels
    for expected, actual in zip(fp32.encode(pixel_values), int8.encode(pixel_values), strict=True):
        assert np.abs(actual - expected).mean() < 0.25 * np.abs(expected).mean() + 1e-3
    assert len(int8.caption(images)) == len(images)


def test_static_quantization_needs_calibration_and_folded_batch_norms(float32_dir, tmp_path, images) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        quantize_onnx(float32_dir, tmp_path / "a", mode="qat")
    with pytest.raises(ValueError, match=r"calibration images are needed for mode \('static', 'fast', 'compact'\)"):
        quantize_onnx(float32_dir, tmp_path / "b", mode="static")
    with pytest.raises(ValueError, match="and only there"):
        quantize_onnx(float32_dir, tmp_path / "c", calibration=images)
    with pytest.raises(ValueError, match="holds no images"):
        quantize_onnx(float32_dir, tmp_path / "d", mode="static", calibration=[])
    old = tmp_path / "old-export"  # an encoder graph with a batch norm, as exports made before the folding
    old.mkdir()
    for path in float32_dir.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    norm = onnx.helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    graph = onnx.load(old / "encoder.onnx")
    graph.graph.node.append(norm)
    onnx.save(graph, old / "encoder.onnx")
    with pytest.raises(ValueError, match=r"encoder\.onnx: the encoder graph holds BatchNormalization nodes"):
        quantize_onnx(old, tmp_path / "e", mode="static", calibration=images)


def test_soli_export_static_calibrates_on_a_datasets_training_photos(saved_model, flickr8k, tmp_path) -> None:
    from soli_hf.cli.export import calibration_photos

    train = calibration_photos(flickr8k, "train", 2)
    assert len(train) == 2 and all("Flicker8k_Dataset" in path for path in train)
    assert len(calibration_photos(flickr8k, "train", 100)) == 3  # all of the split, no more
    out = tmp_path / "static"
    flags = ("--quantize", "arm64", "--quantization-mode", "static")
    status, _, err = run_cli("export", "--model", str(saved_model), "--out", str(out), *flags)
    assert status == 2 and "static, fast or compact needs --calibration-data" in err
    status, _, err = run_cli(
        "export", "--model", str(saved_model), "--out", str(out), *flags, "--calibration-data", str(flickr8k)
    )
    assert status == 0, err
    assert json.loads((out / MANIFEST_NAME).read_text())["quantization"]["graphs"]["encoder"]["calibration"] == {
        "images": 3,
        "method": "MinMax",
    }
    compact = ("--quantization-mode", "compact", "--calibration-data", str(flickr8k), "--size-budget-mb", "50")
    status, _, err = run_cli(
        "export", "--model", str(saved_model), "--out", str(tmp_path / "c"), "--quantize", "arm64", *compact
    )
    assert status == 0, err
    storage = json.loads((tmp_path / "c" / MANIFEST_NAME).read_text())["quantization"]["graphs"]["encoder"]
    assert storage["convolution_weights"]["size_budget_mb"] == 50 and storage["convolution_weights"]["int8"] == []


def test_one_description_names_each_quantization_mode() -> None:
    """The reports (evaluation, profile, int8 parity) all describe a folder's weights with `describe_quantization`."""
    from soli_hf.onnx.manifest import describe_quantization

    dynamic = {"name": "arm64", "mode": "dynamic", "operators": ["MatMul", "Gather"]}
    assert describe_quantization(None) == "float32"
    assert describe_quantization(dynamic) == "dynamic (arm64): MatMul, Gather int8, convolutions float32"
    static = {**dynamic, "name": "avx512", "mode": "static"}
    static["graphs"] = {"encoder": {"format": "QDQ", "calibration": {"method": "MinMax", "images": 300}}}
    assert describe_quantization(static) == (
        "static (avx512): encoder QDQ int8 (MinMax on 300 photos), decoder step dynamic"
    )
    fast = {**dynamic, "mode": "fast", "graphs": {"encoder": {"pointwise_products": {"int8": ["a", "b"]}}}}
    assert describe_quantization(fast) == "fast (arm64): dynamic, and 2 1x1 convolutions as int8 products (GPTQ)"
    storage = {"int8": ["a"], "size_budget_mb": 10.0}
    compact = {**dynamic, "mode": "compact", "graphs": {"encoder": {"convolution_weights": storage}}}
    assert describe_quantization(compact) == (
        "compact (arm64): dynamic, and convolution weights float16, 1 of them int8 (GPTQ), 10 MB budget"
    )
    compact["graphs"]["decoder_step"] = {"products": {"block_size": 128, "format": "MatMulNBits"}}
    assert describe_quantization(compact).endswith("budget; decoder products int8 in blocks of 128 (MatMulNBits)")


def test_a_shared_transposed_weight_is_folded_so_both_products_are_quantized(tmp_path) -> None:
    """The exporter writes one Transpose for a weight two matrix products share (SOLI's projection, used by both
    branches); `_prepare` turns it into the transposed weight, which both products then read as an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    from soli_hf.onnx.quantize import _prepare

    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["weight"], ["weight_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["a", "weight_t"], ["out_a"]),
            helper.make_node("MatMul", ["b", "weight_t"], ["out_b"]),
        ],
        "shared",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4]) for name in ("a", "b")],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("out_a", "out_b")],
        [numpy_helper.from_array(weight, "weight")],
    )
    source = tmp_path / "graph.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), source)
    (tmp_path / "scratch").mkdir()
    prepared, keep_float, _ = _prepare(source, tmp_path / "scratch")
    model = onnx.load(prepared)
    assert [node.op_type for node in model.graph.node] == ["MatMul", "MatMul"] and keep_float == []
    (folded,) = model.graph.initializer  # the original weight, read by nothing now, is gone
    assert folded.name == "weight_t" and np.array_equal(numpy_helper.to_array(folded), weight.T)


# --- compact mode: the convolution weights stored in float16 / int8 (GPTQ) to fit a size budget ------------------


def test_gptq_keeps_a_product_closer_than_rounding_each_weight() -> None:
    """On inputs with correlated channels (as a network's activations are), GPTQ's codes keep `W @ x` closer to the
    float product than the nearest codes, with the same per-row scales and codes in the int8 range."""
    from soli_hf.onnx.gptq import channel_scales, gptq

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(64, 96))
    inputs = rng.normal(size=(96, 24)) @ rng.normal(size=(24, 4000)) + 0.1 * rng.normal(size=(96, 4000))
    codes, scales = gptq(weight, inputs @ inputs.T)
    nearest = np.clip(np.round(weight / channel_scales(weight)[:, None]), -127, 127)
    assert codes.dtype == np.int8 and np.allclose(scales, channel_scales(weight))
    expected = weight @ inputs
    gptq_error = np.linalg.norm((codes * scales[:, None]) @ inputs - expected)
    nearest_error = np.linalg.norm((nearest * channel_scales(weight)[:, None]) @ inputs - expected)
    assert gptq_error < 0.7 * nearest_error


def test_compact_quantization_fits_the_budget_with_folded_weights(float32_dir, tmp_path, images, monkeypatch) -> None:
    """Compact mode stores only as many convolution weights smaller as the budget needs: none under a roomy budget,
    float16 first, then int8 for 1x1 convolutions; onnxruntime folds their decoding at load (the kernels are the
    float32 convolutions of dynamic mode), and the encoder's outputs stay close to dynamic int8's."""
    from soli_hf.bench.onnx_profile import operator_times
    from soli_hf.onnx import compact
    from soli_hf.onnx.gptq import float32_convolutions

    monkeypatch.setattr(compact, "MIN_INT8_WEIGHTS", 1)  # the tiny model's convolutions are all small
    dynamic = tmp_path / "dynamic"
    quantize_onnx(float32_dir, dynamic, backend="onnxruntime")
    roomy, half, tight = tmp_path / "roomy", tmp_path / "half", tmp_path / "tight"
    quantize_onnx(float32_dir, roomy, backend="onnxruntime", mode="compact", calibration=images, size_budget_mb=100)
    graphs_bytes = folder_bytes(roomy)
    encoder = onnx.load(roomy / "encoder.onnx")
    convolutions = list(dict.fromkeys(node.input[1] for node in float32_convolutions(encoder)))
    sizes = {init.name: int(np.prod(init.dims)) for init in encoder.graph.initializer}
    float16_saves = 2 * sum(sizes[name] for name in convolutions)
    budgets = {half: (graphs_bytes - 1) / 1e6, tight: (graphs_bytes - float16_saves - 1) / 1e6}
    for folder, budget in budgets.items():
        quantize_onnx(
            float32_dir, folder, backend="onnxruntime", mode="compact", calibration=images, size_budget_mb=budget
        )
        assert folder_bytes(folder) <= budget * 1e6
    expected_storage = {
        roomy: set(),
        half: {onnx.TensorProto.FLOAT16},
        tight: {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8},
    }
    for folder, expected in expected_storage.items():
        quantization = json.loads((folder / MANIFEST_NAME).read_text())["quantization"]
        assert quantization["mode"] == "compact"
        storage = quantization["graphs"]["encoder"]["convolution_weights"]
        assert bool(storage["int8"]) == (folder == tight) and storage["calibration"]["images"] == len(images)
        assert (set(storage["float32"]) == set(convolutions)) == (folder == roomy)
        stored = onnx.load(folder / "encoder.onnx").graph.initializer
        assert {init.data_type for init in stored if init.name.endswith((".float16", ".int8"))} == expected
    reference, smaller = SoliOnnxCaptioner(dynamic, num_threads=1), SoliOnnxCaptioner(tight, num_threads=1)
    pixel_values = reference.preprocess(images)
    kernels = {
        folder: set(operator_times(folder / "encoder.onnx", {"pixel_values": pixel_values}, threads=1, runs=1))
        for folder in (dynamic, tight)
    }
    assert "Conv" in kernels[tight] and kernels[tight] == kernels[dynamic]  # no Cast / Mul left at run time
    for expected, actual in zip(reference.encode(pixel_values), smaller.encode(pixel_values), strict=True):
        assert np.abs(actual - expected).mean() < 0.05 * np.abs(expected).mean() + 1e-4
    assert len(smaller.caption(images)) == len(images)


def test_compact_quantization_refuses_what_it_cannot_do(float32_dir, tmp_path, images) -> None:
    with pytest.raises(ValueError, match=r"needed for mode \('static', 'fast', 'compact'\)"):
        quantize_onnx(float32_dir, tmp_path / "a", mode="compact")
    with pytest.raises(ValueError, match="size_budget_mb must be positive"):
        quantize_onnx(float32_dir, tmp_path / "b", mode="compact", calibration=images, size_budget_mb=0)
    with pytest.raises(ValueError, match=r"the int8 decoder alone is 0\.\d\d MB, over the 1e-06 MB size budget"):
        quantize_onnx(float32_dir, tmp_path / "c", mode="compact", calibration=images, size_budget_mb=1e-6)
    roomy = tmp_path / "roomy"
    quantize_onnx(float32_dir, roomy, backend="onnxruntime", mode="compact", calibration=images, size_budget_mb=100)
    tiny_budget = (folder_bytes(roomy) - (roomy / "encoder.onnx").stat().st_size + 1000) / 1e6  # 1 kB for the encoder
    with pytest.raises(ValueError, match=r"encoder graph is 0\.\d\d MB .* over its share of the size budget, 0\.00 MB"):
        quantize_onnx(float32_dir, tmp_path / "d", mode="compact", calibration=images, size_budget_mb=tiny_budget)
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()  # nothing half-written


# --- fast mode: the large 1x1 convolutions as int8 matrix products with GPTQ codes --------------------------------


def test_fast_quantization_runs_pointwise_convolutions_as_int8_products(
    float32_dir, tmp_path, images, monkeypatch
) -> None:
    """Fast mode rewrites the encoder's large 1x1 convolutions as channels-last matrix products that the dynamic
    quantizer makes int8 (onnxruntime runs them with its int8 kernels), gives them GPTQ's codes instead of the
    nearest ones, and keeps the encoder's outputs close to float32."""
    from soli_hf.bench.onnx_profile import operator_times
    from soli_hf.onnx import pointwise

    monkeypatch.setattr(pointwise, "MIN_FAST_WEIGHTS", 1)  # the tiny model's convolutions are all small
    quantize_onnx(float32_dir, tmp_path / "dynamic", backend="onnxruntime")
    fast = tmp_path / "fast"
    quantize_onnx(float32_dir, fast, backend="onnxruntime", mode="fast", calibration=images)
    quantization = json.loads((fast / MANIFEST_NAME).read_text())["quantization"]
    products = quantization["graphs"]["encoder"]["pointwise_products"]
    assert quantization["mode"] == "fast" and products["int8"] and products["calibration"]["images"] == len(images)
    # Each rewritten weight is stored once, int8, however many convolutions (branches) read it.
    encoder = onnx.load(fast / "encoder.onnx")
    initializers = {init.name: init for init in encoder.graph.initializer}
    codes = {name: initializers[f"{name}.matmul_quantized"] for name in products["int8"]}
    assert {tensor.data_type for tensor in codes.values()} == {onnx.TensorProto.INT8}
    assert not set(products["int8"]) & set(initializers)  # the float32 weights are gone
    # GPTQ's codes, not the nearest ones: some differ from rounding each weight with the stored scale.
    float32 = {
        init.name: onnx.numpy_helper.to_array(init)
        for init in onnx.load(float32_dir / "encoder.onnx").graph.initializer
    }
    differing = 0
    for name, tensor in codes.items():
        scale = onnx.numpy_helper.to_array(initializers[f"{name}.matmul_scale"])
        nearest = np.clip(np.round(float32[name].reshape(len(scale), -1).T / scale), -127, 127)
        differing += int((onnx.numpy_helper.to_array(tensor) != nearest).sum())
    assert differing > 0
    reference, faster = SoliOnnxCaptioner(float32_dir, num_threads=1), SoliOnnxCaptioner(fast, num_threads=1)
    pixel_values = reference.preprocess(images)

    def count(folder: Path, op_type: str) -> int:
        return sum(node.op_type == op_type for node in onnx.load(folder / "encoder.onnx").graph.node)

    dynamic = tmp_path / "dynamic"
    assert count(fast, "MatMulInteger") > count(dynamic, "MatMulInteger")
    assert count(fast, "Conv") < count(dynamic, "Conv")
    kernels = operator_times(fast / "encoder.onnx", {"pixel_values": pixel_values}, threads=1, runs=1)
    assert "DynamicQuantizeMatMul" in kernels and "ConvInteger" not in kernels  # onnxruntime's int8 products
    for expected, actual in zip(reference.encode(pixel_values), faster.encode(pixel_values), strict=True):
        # every 1x1 convolution of a random tiny model in int8 (weights and activations): the static test's bound
        assert np.abs(actual - expected).mean() < 0.25 * np.abs(expected).mean() + 1e-3
    assert len(faster.caption(images)) == len(images)


def test_smoothing_the_products_inputs_leaves_the_float32_encoder_unchanged(float32_dir, images, tmp_path) -> None:
    """SmoothQuant's rescaling (1/s on each product's input, s on its weight's rows) is exact in float32: the
    smoothed graph's outputs equal the unsmoothed one's; the factors follow the channels' ranges."""
    import onnxruntime as ort

    from soli_hf.onnx import pointwise
    from soli_hf.onnx.gptq import float32_convolutions, input_statistics
    from soli_hf.onnx.quantize import _prepare

    reference = SoliOnnxCaptioner(float32_dir, num_threads=1)
    pixel_values = reference.preprocess(images)
    float32 = onnx.load(float32_dir / "encoder.onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pointwise, "MIN_FAST_WEIGHTS", 1)
        prepared, _, products = _prepare(float32_dir / "encoder.onnx", tmp_path, pointwise=True)
    convolutions = [node for node in float32_convolutions(float32) if node.input[1] in products]
    moments, maxima = input_statistics(float32, convolutions, pixel_values)
    assert set(moments) == set(maxima) == set(products)
    model = onnx.load(prepared)
    factors = pointwise.smooth_products(model, maxima)
    assert set(factors) == set(products)
    assert sum(node.op_type == "Mul" and node.input[1].endswith(".smoothing") for node in model.graph.node) >= len(
        products
    )
    for weight, factor in factors.items():
        assert np.isclose(np.exp(np.mean(np.log(factor))), 1.0)  # geometric mean 1
        wide, narrow = np.argmax(maxima[weight]), np.argmin(maxima[weight])
        if maxima[weight][wide] > 4 * maxima[weight][narrow] > 0:
            assert factor[wide] > factor[narrow]  # the wide channel is divided more
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    smoothed = session.run(None, {session.get_inputs()[0].name: pixel_values})
    for expected, actual in zip(reference.encode(pixel_values), smoothed, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["fast", "compact"])
def test_the_calibrated_modes_store_the_decoder_products_as_int8_blocks(float32_dir, tmp_path, images, mode) -> None:
    """Fast and compact mode: every weight product of the decoder step is a `MatMulNBits` (int8 blocks, int8
    compute), the embedding table dynamic int8; the step's log-probabilities stay close to float32's."""
    from soli_hf.onnx import blockwise

    quantize_onnx(float32_dir, tmp_path, backend="onnxruntime", mode=mode, calibration=images, size_budget_mb=100)
    decoder = onnx.load(tmp_path / "decoder_step.onnx")
    nbits = [node for node in decoder.graph.node if node.op_type == "MatMulNBits"]
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in nbits[0].attribute}
    assert attributes["bits"] == 8 and attributes["block_size"] == blockwise.BLOCK_SIZE
    assert attributes["accuracy_level"] == blockwise.ACCURACY_LEVEL
    assert len(nbits) >= 5 and not any(node.op_type == "MatMulInteger" for node in decoder.graph.node)
    stored = {init.name: init.data_type for init in decoder.graph.initializer}
    assert stored["decoder.embed_tokens.weight_quantized"] in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    record = json.loads((tmp_path / MANIFEST_NAME).read_text())["quantization"]["graphs"]["decoder_step"]
    assert record["mode"] == "blockwise" and record["products"] == blockwise.blockwise_record()
    reference, quantized = SoliOnnxCaptioner(float32_dir, num_threads=1), SoliOnnxCaptioner(tmp_path, num_threads=1)
    encoded = reference.encode(reference.preprocess(images))
    start = np.full(len(images), reference.generation.decoder_start_token_id, dtype=np.int64)
    expected = reference.decoder_session(encoded).step(start)
    actual = quantized.decoder_session(encoded).step(start)
    assert np.abs(np.exp(actual) - np.exp(expected)).max() < 0.02  # probabilities
    assert len(quantized.caption(images, num_beams=3)) == len(images)


# --- greedy search as one graph (written by fast and compact mode) ----------------------------------------------------


@pytest.mark.parametrize("ngram", [0, 1, 2, 3])
def test_the_greedy_graph_gives_the_numpy_search_token_ids(float32_dir, images, ngram) -> None:
    """The Loop graph's sequences equal `runtime.greedy_search`'s for each no-repeat n-gram size, with rows ending at
    different steps, a minimum length and a cap on new tokens."""
    import dataclasses

    import onnxruntime as ort

    from soli_hf.onnx.greedy import greedy_graph
    from soli_hf.onnx.runtime import greedy_search

    captioner = SoliOnnxCaptioner(float32_dir, num_threads=1)
    encoded = captioner.encode(captioner.preprocess(images))
    generation = {**captioner.manifest["generation"], "no_repeat_ngram_size": ngram, "suppress_tokens": [3]}
    graph = greedy_graph(onnx.load(float32_dir / "decoder_step.onnx"), generation, len(captioner.vocabulary))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for min_new, max_new in ((0, 20), (0, 3), (4, 9), (12, 12)):
        settings = captioner.settings(num_beams=1, max_new_tokens=max_new, min_new_tokens=min_new)
        settings = dataclasses.replace(settings, no_repeat_ngram_size=ngram, suppress_tokens=(3,))
        expected = greedy_search(captioner.decoder_session(encoded), len(images), settings)
        lengths = [np.array(max_new, np.int64), np.array(min_new, np.int64)]
        names = [node.name for node in session.get_inputs()]
        (actual,) = session.run(None, dict(zip(names, [*encoded, *lengths], strict=True)))
        assert actual.shape == expected.shape and np.array_equal(actual, expected), (min_new, max_new)


@pytest.mark.parametrize("mode", ["fast", "compact"])
def test_the_calibrated_modes_write_the_greedy_graph_on_the_steps_weights(float32_dir, tmp_path, images, mode) -> None:
    """Fast and compact folders hold `greedy.onnx`, which the runtime uses for greedy search (the same captions as
    the numpy search over the same int8 step); it and the step read one copy of the decoder's weights."""
    quantize_onnx(float32_dir, tmp_path, backend="onnxruntime", mode=mode, calibration=images, size_budget_mb=100)
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    graphs = manifest["graphs"]
    assert graphs["greedy"]["weights"] == graphs["decoder_step"]["weights"] == "decoder_weights.bin"
    assert graph_files(manifest) == ["encoder.onnx", "decoder_step.onnx", "decoder_weights.bin", "greedy.onnx"]
    for name in ("decoder_step.onnx", "greedy.onnx"):  # every weight of over 1 kB is a byte range of the one file
        graph = onnx.load(tmp_path / name, load_external_data=False).graph
        shared = [init for init in graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL]
        locations = {entry.value for init in shared for entry in init.external_data if entry.key == "location"}
        assert shared and locations == {"decoder_weights.bin"}
        inline = [init for init in graph.initializer if init.data_location != onnx.TensorProto.EXTERNAL]
        assert all(onnx.numpy_helper.to_array(init).nbytes < 1024 for init in inline)
    captioner = SoliOnnxCaptioner(tmp_path, num_threads=1)
    assert "greedy" in captioner.sessions
    with_graph = captioner.caption(images, num_beams=1)
    del captioner.sessions["greedy"]  # the numpy greedy search over the same int8 decoder step
    assert captioner.caption(images, num_beams=1) == with_graph
    from soli_hf.bench.onnx_profile import profile_onnx

    profile = profile_onnx(tmp_path, [Image.fromarray(image) for image in images[:1]], tokens=4, repeats=1)
    assert list(profile["stages_ms"]) == ["preprocess", "encoder", "greedy graph (4 tokens, one call)", "caption"]
    assert list(profile["operators_ms_per_run"]) == ["encoder", "decoder_step"]


def test_a_folder_missing_its_shared_decoder_weights_is_refused(float32_dir, tmp_path, images) -> None:
    quantize_onnx(float32_dir, tmp_path, backend="onnxruntime", mode="fast", calibration=images)
    (tmp_path / "decoder_weights.bin").unlink()
    with pytest.raises(ValueError, match=r"missing decoder_weights\.bin named in soli_onnx\.json"):
        SoliOnnxCaptioner(tmp_path)


def test_dynamic_mode_keeps_the_numpy_greedy_search(float32_dir, tmp_path) -> None:
    quantize_onnx(float32_dir, tmp_path, backend="onnxruntime")
    assert not (tmp_path / "greedy.onnx").exists() and not (tmp_path / "decoder_weights.bin").exists()


def test_the_greedy_graph_refuses_a_step_whose_names_it_would_reuse(float32_dir) -> None:
    from soli_hf.onnx.greedy import greedy_graph

    step = onnx.load(float32_dir / "decoder_step.onnx")
    step.graph.node.append(onnx.helper.make_node("Identity", [step.graph.node[0].output[0]], ["scores"]))
    manifest = json.loads((float32_dir / MANIFEST_NAME).read_text())
    with pytest.raises(ValueError, match=r"the decoder step already uses the names \['scores'\]"):
        greedy_graph(step, manifest["generation"], len(manifest["vocabulary"]))


def test_the_graph_swap_pairs_every_encoder_with_every_decoder_step(float32_dir, tmp_path, images) -> None:
    """`bench.graph_swap`: a folder paired with itself captions as the folder does on its own; every other pairing
    gets a share of captions identical to float32's, and the report renders."""
    from soli_hf.bench.graph_swap import captions_by_pairing, graph_swap_report, write_graph_swap_report

    int8 = tmp_path / "int8"
    quantize_onnx(float32_dir, int8, backend="onnxruntime")
    pairs = captions_by_pairing([float32_dir, int8], images[:3], beams=(1, 3))
    assert set(pairs) == {(a, b) for a in (float32_dir, int8) for b in (float32_dir, int8)}
    for folder in (float32_dir, int8):
        captioner = SoliOnnxCaptioner(folder, num_threads=1)
        for index, image in enumerate(images[:3]):
            for num_beams in (1, 3):
                expected = captioner.generate(captioner.preprocess([image]), num_beams=num_beams)[0]
                assert pairs[folder, folder][num_beams][index] == tuple(expected)
    report = graph_swap_report(float32_dir, [int8], images[:3], split="tiny")
    assert report["split"] == "tiny" and report["images"] == 3 and len(report["pairings"]) == 3
    for row in report["pairings"]:
        assert set(row["identical"]) == {"1", "3"} and all(0 <= share <= 1 for share in row["identical"].values())
    write_graph_swap_report(report, tmp_path / "swap" / "both.json")
    assert "| encoder from | decoder step from |" in (tmp_path / "swap" / "both.md").read_text()
