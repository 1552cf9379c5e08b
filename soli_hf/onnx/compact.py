"""Compact convolution weights: an int8 encoder graph whose float32 convolutions are stored in fewer bytes.

Dynamic int8 (`quantize.py`) keeps MobileNetV2's convolutions in float32, so the `lr` int8 folder was 14.8 MiB. Here
the convolutions still RUN in float32 (same kernels, same speed), but their weights are STORED smaller and decoded
into float32 constants by onnxruntime when it loads the graph (it folds a `Cast` / `Mul` of constants):
- a weight goes to float16, or (1x1 convolutions of at least `MIN_INT8_WEIGHTS` weights) to int8 (symmetric, one
  scale per output channel, rounded with GPTQ, Frantar et al. 2022, `gptq`), the changes that add the least error
  per byte saved first, until the graphs fit the size budget. The error is measured on the calibration photos
  (training photos, never the evaluation split): the relative change of the encoder's first output (the memory
  grid), each change alone from float32.

The small early convolutions stay float32: on the shipped model (`lr`) every weight in float16 changes the memory
grid by 1.0%, 0.9% of it from the 288 weights of the stem's depthwise convolution alone (BN folded into it, its
weights span 8e-6 to 56); float16 for the weights of at least 5,000 values only, 0.16%, for 0.09 MB more. Measured
on the shipped model, `lr`, all 1,000 Flickr8k dev photos, batch 1, against float32 (encoder alone, float32
decoder; greedy / beam 3): everything float16 first, then int8 (the selection until 2026-11-30) 90.9% / 89.3%; this
selection for a 10 MB budget 92.4% / 91.4% (9.97 MB). The model shipped until 2026-11-30 was less sensitive
(`benchmarks/onnx_int8_dev_2026-11-29.md`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .gptq import encoder_output, float32_convolutions, gptq, input_second_moments

#: The smallest 1x1 convolution (in weights) that is considered for int8.
MIN_INT8_WEIGHTS = 20_000
#: Bytes per weight of each storage.
_BYTES = {"float32": 4, "float16": 2, "int8": 1}


@dataclass(frozen=True)
class CompactEncoder:
    """The compacted encoder graph, the convolution weights stored as int8 and those kept float32 (the others are
    float16), and the relative error of its memory output against the float32 weights on the calibration photos."""

    model: onnx.ModelProto
    int8_weights: list[str]
    float32_weights: list[str]
    calibration_error: float


def compact_encoder(encoder: onnx.ModelProto, pixel_values: np.ndarray, budget_bytes: int) -> CompactEncoder:
    """Store `encoder`'s float32 convolution weights smaller, float16 or (pointwise convolutions) int8 (GPTQ), the
    changes that add the least error per byte saved first, until the serialized graph is at most `budget_bytes`.

    Args:
        encoder: an encoder graph whose convolutions read float32 initializers (an exported or int8 SOLI encoder).
        pixel_values: calibration inputs (B, 3, S, S), preprocessed as the captioner does; use training photos.
        budget_bytes: the most the compacted graph may weigh.

    Raises:
        ValueError: when even every weight at its smallest (int8 for the candidates, float16 for the others) does
            not fit the budget, or the graph has no float32 convolution weight.
    """
    shapes = {tensor.name: tuple(tensor.dims) for tensor in encoder.graph.initializer}
    convolutions = float32_convolutions(encoder)
    if not convolutions:
        raise ValueError("compact: the encoder graph has no float32 convolution weight to store smaller")
    candidates = [
        node
        for node in convolutions
        if shapes[node.input[1]][2:] == (1, 1) and np.prod(shapes[node.input[1]]) >= MIN_INT8_WEIGHTS
    ]
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in encoder.graph.initializer}
    moments = input_second_moments(encoder, candidates, pixel_values)
    codes = {name: gptq(weights[name].reshape(shapes[name][0], -1), moment) for name, moment in moments.items()}
    reference = encoder_output(encoder, pixel_values)

    def error(choice: dict[str, str]) -> float:
        output = encoder_output(stored_weights(encoder, choice, codes), pixel_values)
        # relative to the float32 output (a tiny random model's can be all zeros: then the error itself)
        return float(np.linalg.norm(output - reference) / max(np.linalg.norm(reference), 1e-12))

    # Each change alone, from float32: its squared error per byte saved.
    names = list(dict.fromkeys(node.input[1] for node in convolutions))  # both branches read one weight
    changes = [(name, "float16") for name in names] + [(name, "int8") for name in codes]
    cost = {
        (name, kind): error({name: kind}) ** 2 / (weights[name].size * (4 - _BYTES[kind])) for name, kind in changes
    }
    storage: dict[str, str] = {}
    model = stored_weights(encoder, storage, codes)
    for name, kind in sorted(changes, key=cost.get):
        if model.ByteSize() <= budget_bytes:
            break
        if _BYTES[kind] < _BYTES[storage.get(name, "float32")]:
            storage[name] = kind
            model = stored_weights(encoder, storage, codes)
    if model.ByteSize() > budget_bytes:
        raise ValueError(
            f"compact: the encoder graph is {model.ByteSize() / 1e6:.2f} MB with every 1x1 convolution of at least "
            f"{MIN_INT8_WEIGHTS} weights in int8 and the others in float16: over its share of the size budget, "
            f"{budget_bytes / 1e6:.2f} MB"
        )
    int8 = [name for name, kind in storage.items() if kind == "int8"]
    float32 = [name for name in names if name not in storage]
    return CompactEncoder(model, int8, float32, error(storage))


def stored_weights(
    encoder: onnx.ModelProto, storage: dict[str, str], int8_codes: dict[str, tuple[np.ndarray, np.ndarray]]
) -> onnx.ModelProto:
    """A copy of `encoder` where each weight named in `storage` is kept as "float16" (then `Cast`) or "int8" (its
    `int8_codes` codes and scales, then `Cast` and `Mul`): the convolutions read the same float32 name as before."""
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    decoders = []
    for name, kind in storage.items():
        weight = numpy_helper.to_array(initializers[name])
        graph.initializer.remove(initializers[name])
        if kind == "float16":
            graph.initializer.append(numpy_helper.from_array(weight.astype(np.float16), f"{name}.float16"))
            decoders.append(helper.make_node("Cast", [f"{name}.float16"], [name], to=TensorProto.FLOAT))
            continue
        codes, scales = int8_codes[name]
        graph.initializer.append(numpy_helper.from_array(codes.reshape(weight.shape), f"{name}.int8"))
        graph.initializer.append(numpy_helper.from_array(scales.reshape(-1, 1, 1, 1), f"{name}.scale"))
        decoders.append(helper.make_node("Cast", [f"{name}.int8"], [f"{name}.codes"], to=TensorProto.FLOAT))
        decoders.append(helper.make_node("Mul", [f"{name}.codes", f"{name}.scale"], [name]))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(decoders + nodes)
    return model
