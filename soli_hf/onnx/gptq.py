"""GPTQ (Frantar et al. 2022): int8 weights of a linear map rounded so that its OUTPUT stays close, calibrated on
the inputs an encoder graph actually gives that map (its calibration photos: training photos, never the evaluation
split). Used for the encoder's 1x1 convolutions by the compact and fast quantization modes (`compact.py`,
`pointwise.py`); on the shipped model it keeps 91.8% of the `lr` dev captions identical to float32 where rounding
each weight to nearest keeps 82.7% (the 13 largest 1x1 convolutions in int8, `benchmarks/onnx_int8_dev_2026-11-29.md`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

#: GPTQ's damping of the input second moment, a fraction of its mean diagonal.
GPTQ_DAMPING = 0.01
#: Calibration photos run through the encoder this many at a time.
BATCH = 32


def gptq(weight: np.ndarray, moment: np.ndarray, damping: float = GPTQ_DAMPING) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and per-row scales of a (out, in) weight that keep `weight @ x` close for inputs `x` whose second
    moment `E[x x^T]` is proportional to `moment` (in, in).

    The columns are rounded one by one, in the order of the largest input energy (the moment's diagonal); each
    column's rounding error is spread over the columns not yet rounded through the Cholesky factor of the moment's
    inverse, so that the later roundings correct the earlier ones (GPTQ's update, with its "act order")."""
    order = np.argsort(-np.diag(moment))
    weight = weight[:, order].astype(np.float64)
    moment = moment[np.ix_(order, order)].astype(np.float64)
    dead = np.diag(moment) == 0  # an input that is always zero: its weights are free, round them as they come
    moment[dead, dead] = 1.0
    moment += damping * np.mean(np.diag(moment)) * np.eye(len(order))
    scales = channel_scales(weight)
    factor = np.linalg.cholesky(np.linalg.inv(moment)).T  # upper triangular
    codes = np.zeros_like(weight)
    for column in range(weight.shape[1]):
        codes[:, column] = np.clip(np.round(weight[:, column] / scales), -127, 127)
        error = (weight[:, column] - codes[:, column] * scales) / factor[column, column]
        weight[:, column + 1 :] -= np.outer(error, factor[column, column + 1 :])
    return codes[:, np.argsort(order)].astype(np.int8), scales.astype(np.float32)


def channel_scales(weight: np.ndarray) -> np.ndarray:
    """Symmetric int8 scales of a (out, in) weight, one per output channel (row)."""
    scales = np.abs(weight).max(axis=1) / 127.0
    return np.where(scales == 0, 1.0, scales)


def input_second_moments(
    encoder: onnx.ModelProto, convolutions: list[onnx.NodeProto], pixel_values: np.ndarray
) -> dict[str, np.ndarray]:
    """`sum x x^T` (float64) of each 1x1 convolution's input over every pixel of every calibration image, keyed by
    the convolution's weight. A weight that several convolutions read (the two SOLI branches share the backbone)
    sums the inputs of all of them."""
    return input_statistics(encoder, convolutions, pixel_values)[0]


def input_statistics(
    encoder: onnx.ModelProto, convolutions: list[onnx.NodeProto], pixel_values: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`input_second_moments`, and the largest absolute value of each input channel (over the inputs of every
    convolution reading the weight), keyed by the convolution's weight, from one pass over the calibration images."""
    if not convolutions:
        return {}, {}
    probe = onnx.ModelProto()
    probe.CopyFrom(encoder)
    names = list(dict.fromkeys(node.input[0] for node in convolutions))
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = calibration_session(probe)
    weight_of = {}
    for node in convolutions:
        weight_of.setdefault(node.input[0], []).append(node.input[1])
    moments: dict[str, np.ndarray] = {}
    maxima: dict[str, np.ndarray] = {}
    for start in range(0, len(pixel_values), BATCH):
        batch = {session.get_inputs()[0].name: pixel_values[start : start + BATCH]}
        for name, activations in zip(names, session.run(names, batch), strict=True):
            columns = activations.transpose(1, 0, 2, 3).reshape(activations.shape[1], -1).astype(np.float64)
            largest = np.abs(columns).max(axis=1)
            for weight in weight_of[name]:
                moments[weight] = moments.get(weight, 0) + columns @ columns.T
                maxima[weight] = np.maximum(maxima[weight], largest) if weight in maxima else largest
    return moments, maxima


def float32_convolutions(encoder: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The convolutions whose weight is a float32 initializer, in graph order."""
    initializers = {tensor.name: tensor for tensor in encoder.graph.initializer}
    return [
        node
        for node in encoder.graph.node
        if node.op_type == "Conv"
        and node.input[1] in initializers
        and initializers[node.input[1]].data_type == TensorProto.FLOAT
    ]


def calibration_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A quiet one-graph onnxruntime session for calibration runs (CPU, default threads)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the probe's extra outputs have no shapes: no warning for each
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def encoder_output(encoder: onnx.ModelProto, pixel_values: np.ndarray) -> np.ndarray:
    """The encoder's first output (the memory grid) for all calibration inputs."""
    session = calibration_session(encoder)
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: pixel_values[s : s + BATCH]})[0] for s in range(0, len(pixel_values), BATCH)]
    return np.concatenate(outputs)
