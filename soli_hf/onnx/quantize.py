"""int8 quantization of an exported SOLI folder, for ARM64 (Raspberry Pi) or x86 (AVX2 / AVX512).

`quantize_onnx(onnx_dir, out_dir, target="arm64")` writes a folder of the same layout (`encoder.onnx`,
`decoder_step.onnx`, `soli_onnx.json` with a `quantization` entry) that `SoliOnnxCaptioner` loads unchanged. Like
the export, it writes that folder whole or not at all (`folder.py`).

Four modes:
- "dynamic" (the default): both graphs, as below.
- "fast" (`mode="fast", calibration=images`): "dynamic", and the encoder's large 1x1 convolutions (MobileNetV2's last
  stage) as int8 matrix products with GPTQ weights calibrated on the images, their inputs smoothed first
  (SmoothQuant, `pointwise.py`): the "both" encoder runs about 1.5 ms faster (6.8 -> 5.3 ms on one thread).
- "compact" (`mode="compact", calibration=images`): "dynamic", and the encoder's float32 convolution weights stored
  smaller, float16 or (1x1 convolutions) int8 with GPTQ, least added error per byte saved first, until both graphs
  fit `size_budget_mb` (`compact.py`). The convolutions still run in float32: the same speed, a smaller file (`lr`:
  15.5 -> 9.97 MB for a 10 MB budget).
- In both, the decoder step's matrix products are weight-only int8 blocks with int8 compute (`blockwise.py`,
  onnxruntime's `MatMulNBits`) instead of dynamic int8: fewer changed captions and a faster step; and the folder
  holds `greedy.onnx`, greedy search as one graph (`greedy.py`: the same token ids, one call instead of one per
  token), which reads the decoder step's weights from the same `decoder_weights.bin` (a few kB more on disk).
- "static" (`mode="static", calibration=images`): the encoder graph, convolutions included, is quantized
  statically in the QDQ format (`onnxruntime.quantization.quantize_static`): each activation gets a fixed uint8
  scale found by running the float32 encoder over the calibration images (a few hundred training photos; never
  the photos it is evaluated on), weights int8 per channel as the target says. onnxruntime then runs the
  convolutions as `QLinearConv`. The exporter folds the batch norms into the convolutions (`graphs.py`), so both
  branches keep sharing one set of int8 weights; a folder exported before that (with `BatchNormalization` nodes)
  is refused. The decoder step keeps dynamic int8: its activations (the LSTM state, the attention context) change
  every step, and calibrating them would need whole searches for no gain in kernels. On the shipped model it keeps
  only 50-61% of the dev captions identical to float32 (dynamic: 93-95%; `benchmarks/onnx_int8_dev_2026-11-29.md`, where
  percentile and entropy calibration and float32 exceptions did no better), hence opt-in.

The targets are Optimum's `AutoQuantizationConfig.arm64 / avx2 / avx512` dynamic configurations: activations
uint8 (asymmetric, quantized at run time), weights int8 (uint8 for AVX2) symmetric, per channel, full range.
Where Optimum's ONNX Runtime integration is installed (optimum-onnx) they go through `ORTQuantizer`; otherwise
through `onnxruntime.quantization.quantize_dynamic` with the same settings.

Only `QUANTIZED_OPERATORS` are quantized: the decoder's matrix products (LSTM, attention, the output layer), the
embedding table and the encoder's projections. Measured on the shipped model (x86, one thread, Flickr8k dev):
- MobileNetV2's convolutions stay float32: dynamic int8 turns them into `ConvInteger`, which onnxruntime's CPU
  kernels run about 5x slower than float32 `Conv` (encoder 51 ms vs 11 ms).
- A matrix product whose input is a concatenation stays float32: the LSTM's input is [word embedding; attention
  context], two activations of different ranges, and one uint8 scale for both changed 20% of the dev captions
  (7% with it excluded). The exporter now splits that product in two (`graphs.SplitInputLSTMCell`), each int8
  with its own scale: 189 of the first 200 dev captions stay identical to float32 (190 with the product kept
  float32), and the decoder step shrinks from 9.3 to 4.8 MiB. The exclusion remains for folders exported before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.onnx_model import ONNXModel

from .blockwise import OPERATORS as BLOCKWISE_OPERATORS
from .blockwise import blockwise_products, blockwise_record
from .compact import compact_encoder
from .folder import write_export_folder
from .gptq import float32_convolutions, input_statistics
from .greedy import add_greedy_graph
from .manifest import REEXPORT, graph_files, read_manifest
from .pointwise import SMOOTHING_ALPHA, pointwise_as_matmul, smooth_products, use_gptq_codes
from .runtime import preprocess
from .spec import (
    CALIBRATED_MODES,
    DECODER_STEP,
    DEFAULT_SIZE_BUDGET_MB,
    ENCODER,
    GRAPHS,
    MANIFEST_NAME,
    QUANTIZATION_MODES,
)

QUANTIZED_OPERATORS = ("MatMul", "Gather")
#: The modes whose decoder step's matrix products are weight-only int8 blocks (`blockwise.py`), not dynamic int8.
BLOCKWISE_DECODER_MODES = ("fast", "compact")
#: What static mode quantizes in the encoder graph (QDQ): its convolutions and what joins them, so that int8
#: tensors flow from one convolution to the next (`Clip`, ReLU6, is folded into the convolution before it).
STATIC_OPERATORS = ("Conv", "Clip", "Add", "AveragePool", "MatMul", "Gemm")
BACKENDS = ("auto", "optimum", "onnxruntime")
#: Calibration images run through the float32 encoder this many at a time.
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class QuantizationTarget:
    """The dynamic int8 settings for one kind of CPU (those of Optimum's `AutoQuantizationConfig.<name>`)."""

    name: str
    weights_dtype: str  # onnxruntime QuantType name
    symmetric_weights: bool = True
    per_channel: bool = True
    reduce_range: bool = False


#: One entry per name of `spec.QUANTIZATION_TARGETS` (the command line's choices).
TARGETS = {
    "arm64": QuantizationTarget("arm64", "QInt8"),
    "avx2": QuantizationTarget("avx2", "QUInt8"),
    "avx512": QuantizationTarget("avx512", "QInt8"),
}


def quantize_onnx(
    onnx_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    target: str = "arm64",
    backend: str = "auto",
    mode: str = "dynamic",
    calibration: Sequence[Any] | None = None,
    size_budget_mb: float = DEFAULT_SIZE_BUDGET_MB,
) -> list[Path]:
    """Quantize both graphs of an exported SOLI folder to int8 for `target` into `out_dir`.

    Args:
        onnx_dir: a float32 folder written by `soli_hf.onnx.export.export_onnx`.
        out_dir: must differ from `onnx_dir`; a new folder, an empty one or a previous export, replaced whole once
            the quantized folder is complete (a folder holding other files is refused, see `export_onnx`).
        target: one of `TARGETS` ("arm64", "avx2", "avx512").
        backend: how the dynamic graphs are quantized: "optimum" (Optimum's `ORTQuantizer`), "onnxruntime"
            (`quantize_dynamic`) or "auto" (Optimum where installed). Static mode's encoder always goes through
            onnxruntime's `quantize_static`.
        mode: "dynamic" (both graphs), "static" (the encoder static, calibrated on `calibration`; the decoder
            step dynamic), "fast" ("dynamic" with the encoder's large 1x1 convolutions as int8 products, and the
            greedy graph) or "compact" ("dynamic" with the encoder's convolution weights stored smaller, to fit
            `size_budget_mb`), see the module docstring.
        calibration: static, fast and compact modes only, and required there: the calibration images (paths, PIL images
            or arrays, as `SoliOnnxCaptioner.caption` takes them), preprocessed as the manifest says. Use training
            photos.
        size_budget_mb: compact mode: the most both graphs may weigh together, in MB (10^6 bytes).

    Returns:
        The paths written.
    """
    if target not in TARGETS:
        raise ValueError(f"quantize_onnx: target must be one of {sorted(TARGETS)}, got {target!r}")
    if backend not in BACKENDS:
        raise ValueError(f"quantize_onnx: backend must be one of {BACKENDS}, got {backend!r}")
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"quantize_onnx: mode must be one of {QUANTIZATION_MODES}, got {mode!r}")
    if (mode in CALIBRATED_MODES) != (calibration is not None):
        raise ValueError(f"quantize_onnx: calibration images are needed for mode {CALIBRATED_MODES}, and only there")
    if not size_budget_mb > 0:
        raise ValueError(f"quantize_onnx: size_budget_mb must be positive, got {size_budget_mb!r}")
    if calibration is not None and len(calibration) == 0:
        raise ValueError("quantize_onnx: calibration holds no images")
    source, out = Path(onnx_dir), Path(out_dir)
    manifest = read_manifest(source)
    if "quantization" in manifest:
        raise ValueError(f"quantize_onnx: {source} is already quantized ({manifest['quantization']})")
    if out.resolve() == source.resolve():
        raise ValueError("quantize_onnx: out_dir must differ from onnx_dir (the float32 graphs would be replaced)")
    if backend == "auto":
        backend = "optimum" if _optimum_available() else "onnxruntime"
    settings = TARGETS[target]
    if mode == "static":
        _check_folded(source / ENCODER.file_name)
    return write_export_folder(
        out,
        lambda folder: _write_quantized(source, folder, manifest, settings, backend, mode, calibration, size_budget_mb),
    )


def _write_quantized(
    source: Path,
    out: Path,
    manifest: dict[str, Any],
    settings: QuantizationTarget,
    backend: str,
    mode: str,
    calibration: Sequence[Any] | None,
    size_budget_mb: float,
) -> list[Path]:
    """Quantize the graphs of the float32 folder `source` into the folder `out` in `mode`, dynamically with `backend`
    ("optimum" or "onnxruntime"), and write its manifest: `source`'s with a `quantization` entry."""
    quantize = _quantize_with_optimum if backend == "optimum" else _quantize_with_onnxruntime
    written, excluded, graphs = [], {}, {}
    with tempfile.TemporaryDirectory() as scratch, _without_preprocessing_hint():
        for graph in GRAPHS:
            fast = mode == "fast" and graph.key == ENCODER.key
            prepared, excluded[graph.key], products = _prepare(source / graph.file_name, Path(scratch), fast)
            destination = out / graph.file_name
            if mode == "static" and graph.key == ENCODER.key:
                inputs = ImageCalibrationReader(calibration, manifest["preprocessing"], ENCODER.inputs[0].name)
                _quantize_static(prepared, destination, settings, inputs)
                graphs[graph.key] = {
                    "mode": "static",
                    "format": "QDQ",
                    "operators": list(STATIC_OPERATORS),
                    "calibration": {"images": len(calibration), "method": CalibrationMethod.MinMax.name},
                    "backend": "onnxruntime",
                }
            elif mode in BLOCKWISE_DECODER_MODES and graph.key == DECODER_STEP.key:
                onnx.save(blockwise_products(onnx.load(prepared), excluded[graph.key]), prepared)
                quantize(prepared, destination, settings, excluded[graph.key], ("Gather",))
                graphs[graph.key] = {
                    "mode": "blockwise",
                    "operators": [*BLOCKWISE_OPERATORS, "Gather"],
                    "products": blockwise_record(),
                    "backend": backend,
                }
            else:
                statistics = _smooth_pointwise(source, prepared, manifest, calibration, products) if fast else None
                quantize(prepared, destination, settings, excluded[graph.key])
                graphs[graph.key] = {"mode": "dynamic", "operators": list(QUANTIZED_OPERATORS), "backend": backend}
                if statistics is not None:
                    graphs[graph.key]["pointwise_products"] = _use_gptq_codes(source, out, statistics, len(calibration))
            written.append(destination)
    manifest = {**manifest, "graphs": dict(manifest["graphs"])}
    if mode in BLOCKWISE_DECODER_MODES:  # before compacting: the size budget counts the greedy graph too
        written.extend(add_greedy_graph(out, manifest))
    if mode == "compact":
        graphs[ENCODER.key]["convolution_weights"] = _compact(out, manifest, calibration, size_budget_mb)
    quantization = {
        **asdict(settings),
        "mode": mode,
        "activations_dtype": "QUInt8",
        "operators": list(dict.fromkeys(op for entry in graphs.values() for op in entry["operators"])),
        "float32_nodes": excluded,
        "backend": backend,
        "graphs": graphs,
    }
    manifest["quantization"] = quantization
    manifest_path = out / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return [*written, manifest_path]


def _smooth_pointwise(
    source: Path, prepared: Path, manifest: dict[str, Any], calibration: Sequence[Any], products: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fast mode, before quantizing: the statistics of the inputs of the encoder's 1x1 convolutions `products`
    (weights of the float32 encoder in `source`) on `calibration`, and the `prepared` graph's products smoothed with
    them (`pointwise.smooth_products`). Returns the inputs' second moments and the smoothing factors."""
    pixel_values = preprocess(list(calibration), manifest["preprocessing"])
    float32 = onnx.load(source / ENCODER.file_name)
    convolutions = [node for node in float32_convolutions(float32) if node.input[1] in products]
    moments, maxima = input_statistics(float32, convolutions, pixel_values)
    model = onnx.load(prepared)
    factors = smooth_products(model, maxima)
    onnx.save(model, prepared)
    return moments, factors


def _use_gptq_codes(
    source: Path, out: Path, statistics: tuple[dict[str, np.ndarray], dict[str, np.ndarray]], images: int
) -> dict[str, Any]:
    """Fast mode, after quantizing: give the encoder's int8 products GPTQ's codes for their smoothed inputs
    (`_smooth_pointwise`'s `statistics`, from `images` calibration photos); returns the manifest's record of them."""
    moments, factors = statistics
    encoder = onnx.load(out / ENCODER.file_name)
    use_gptq_codes(encoder, onnx.load(source / ENCODER.file_name), moments, factors)
    onnx.save(encoder, out / ENCODER.file_name)
    return {
        "int8": list(moments),
        "rounding": "GPTQ, one scale per output channel",
        "smoothing": {"method": "SmoothQuant", "alpha": SMOOTHING_ALPHA},
        "calibration": {"images": images},
    }


def _compact(out: Path, manifest: dict[str, Any], calibration: Sequence[Any], size_budget_mb: float) -> dict[str, Any]:
    """Compact mode: store the convolution weights of the int8 encoder in `out` smaller, so that all graphs fit
    `size_budget_mb`; returns the manifest's record of the storage."""
    decoder_bytes = sum((out / name).stat().st_size for name in graph_files(manifest) if name != ENCODER.file_name)
    budget = round(size_budget_mb * 1e6) - decoder_bytes
    if budget <= 0:
        raise ValueError(
            f"quantize_onnx: the int8 decoder alone is {decoder_bytes / 1e6:.2f} MB, over the "
            f"{size_budget_mb} MB size budget"
        )
    pixel_values = preprocess(list(calibration), manifest["preprocessing"])
    compacted = compact_encoder(onnx.load(out / ENCODER.file_name), pixel_values, budget)
    onnx.save(compacted.model, out / ENCODER.file_name)
    return {
        "storage": "float16, but int8 (GPTQ, one scale per output channel) and float32 for the weights listed",
        "int8": compacted.int8_weights,
        "float32": compacted.float32_weights,
        "calibration": {"images": len(calibration), "memory_relative_error": round(compacted.calibration_error, 5)},
        "size_budget_mb": size_budget_mb,
    }


class ImageCalibrationReader(CalibrationDataReader):
    """The calibration images as encoder inputs: `pixel_values` batches of `batch_size` images, preprocessed by
    `runtime.preprocess` with the manifest's `preprocessing` settings (what the captioner feeds the encoder)."""

    def __init__(
        self, images: Sequence[Any], preprocessing: dict[str, Any], input_name: str, batch_size: int = CALIBRATION_BATCH
    ) -> None:
        self.images, self.preprocessing, self.input_name = images, preprocessing, input_name
        self.batch_size = batch_size
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None after the last."""
        if self.position >= len(self.images):
            return None
        batch = list(self.images[self.position : self.position + self.batch_size])
        self.position += self.batch_size
        return {self.input_name: preprocess(batch, self.preprocessing)}

    def rewind(self) -> None:
        """Start again from the first image."""
        self.position = 0


def _check_folded(path: Path) -> None:
    """`ValueError` when the encoder graph at `path` still holds batch norms (exported before they were folded):
    static quantization would quantize the convolutions' unfolded weights and keep the norms in float32."""
    if any(node.op_type == "BatchNormalization" for node in _load_graph(path).graph.node):
        raise ValueError(
            f"{path}: the encoder graph holds BatchNormalization nodes (exported by an older version); static "
            f"quantization needs them folded into the convolutions; {REEXPORT}"
        )


def _quantize_static(
    source: Path, destination: Path, settings: QuantizationTarget, calibration: CalibrationDataReader
) -> None:
    """`onnxruntime.quantization.quantize_static` (QDQ, MinMax calibration) with the target's weight settings."""
    quantize_static(
        source,
        destination,
        calibration,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(STATIC_OPERATORS),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType[settings.weights_dtype],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": settings.symmetric_weights, "ActivationSymmetric": False},
    )


def _optimum_available() -> bool:
    """True when Optimum's ONNX Runtime integration can be imported."""
    try:
        return find_spec("optimum.onnxruntime") is not None
    except ImportError:  # `optimum` itself is missing
        return False


class _PreprocessingHintFilter(logging.Filter):
    """Drops onnxruntime's "Please consider to run pre-processing before quantization" warning: it judges by the
    missing shape hints, which `_prepare` removes on purpose (shape inference recomputes them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_hint() -> Iterator[None]:
    """While quantizing, without that warning (onnxruntime logs it on the root logger)."""
    hint_filter = _PreprocessingHintFilter()
    logging.getLogger().addFilter(hint_filter)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(hint_filter)


def _prepare(path: Path, scratch: Path, pointwise: bool = False) -> tuple[Path, list[str], list[str]]:
    """A copy of a graph ready to quantize, the names of the matrix products to keep in float32, and the weights of
    the 1x1 convolutions rewritten as matrix products (`pointwise`, fast mode: `pointwise.pointwise_as_matmul`).

    - The `value_info` shape hints are dropped: the torch.onnx exporter records them for the weights too, the
      quantizer rewrites some weights and its shape inference then fails on the stale hint ("Inferred shape and
      existing shape differ"). Shape inference recomputes them.
    - `Gemm` (a linear layer) becomes `MatMul` + `Add`, as onnxruntime's dynamic quantizer does itself, so that
      both backends quantize the same nodes under names known here.
    - A `Transpose` of a weight becomes the transposed weight (`_fold_weight_transposes`), so that the products
      reading it see a weight the quantizer can quantize.
    - Matrix products fed by a `Concat` are returned to exclude (see the module docstring).
    """
    model = _load_graph(path)
    del model.graph.value_info[:]
    products = pointwise_as_matmul(model) if pointwise else []
    _fold_weight_transposes(model)
    ONNXModel(model).replace_gemm_with_matmul()
    concatenated = {output for node in model.graph.node if node.op_type == "Concat" for output in node.output}
    keep_float = [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[0] in concatenated]
    prepared = scratch / path.name
    onnx.save(model, prepared)
    return prepared, keep_float, products


def _fold_weight_transposes(model: onnx.ModelProto) -> None:
    """Replace every `Transpose` of an initializer by the transposed initializer (under the node's output name) and
    drop the initializers no node reads any more. The exporter writes one `Transpose` for a weight that several
    matrix products share (the projection both SOLI branches use), and the dynamic quantizer only quantizes a
    product whose weight is an initializer: that product stayed float32 (0.56 of the 7.3 ms "both" encoder)."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    folded = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in weights:
            array = onnx.numpy_helper.to_array(weights[node.input[0]])
            perm = next((list(attribute.ints) for attribute in node.attribute if attribute.name == "perm"), None)
            graph.initializer.append(onnx.numpy_helper.from_array(np.transpose(array, perm), node.output[0]))
            folded.append(node)
    for node in folded:
        graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    unread = [init for init in graph.initializer if init.name not in read]
    for init in unread:
        graph.initializer.remove(init)


def _load_graph(path: Path) -> onnx.ModelProto:
    """The ONNX graph at `path`; `ValueError` naming the file when it is damaged (not protobuf, or no graph)."""
    try:
        model = onnx.load(path)
    except DecodeError as error:
        raise ValueError(f"{path}: damaged or not an ONNX graph ({error}); {REEXPORT}") from error
    if not model.graph.node:
        raise ValueError(f"{path}: damaged or not an ONNX graph (it holds no graph); {REEXPORT}")
    return model


def _quantize_with_onnxruntime(
    source: Path,
    destination: Path,
    settings: QuantizationTarget,
    nodes_to_exclude: list[str],
    operators: Sequence[str] = QUANTIZED_OPERATORS,
) -> None:
    """`onnxruntime.quantization.quantize_dynamic` of `operators` with the target's settings."""
    quantize_dynamic(
        source,
        destination,
        op_types_to_quantize=list(operators),
        nodes_to_exclude=nodes_to_exclude,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=QuantType[settings.weights_dtype],
        extra_options={"WeightSymmetric": settings.symmetric_weights, "ActivationSymmetric": False},
    )


def _quantize_with_optimum(
    source: Path,
    destination: Path,
    settings: QuantizationTarget,
    nodes_to_exclude: list[str],
    operators: Sequence[str] = QUANTIZED_OPERATORS,
) -> None:
    """Optimum's `ORTQuantizer` with `AutoQuantizationConfig.<target>(is_static=False, ...)` for `operators`."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    options: dict[str, Any] = {
        "is_static": False,
        "per_channel": settings.per_channel,
        "use_symmetric_weights": settings.symmetric_weights,
        "operators_to_quantize": list(operators),
        "nodes_to_exclude": nodes_to_exclude,
    }
    if settings.name != "arm64":  # arm64 has no reduce_range option (always full range)
        options["reduce_range"] = settings.reduce_range
    config = getattr(AutoQuantizationConfig, settings.name)(**options)
    quantizer = ORTQuantizer.from_pretrained(source.parent, file_name=source.name)
    with tempfile.TemporaryDirectory() as save_dir:
        quantized = quantizer.quantize(quantization_config=config, save_dir=save_dir)
        produced = Path(quantized) if Path(quantized).is_file() else Path(save_dir) / f"{source.stem}_quantized.onnx"
        shutil.move(produced, destination)
