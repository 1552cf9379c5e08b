"""The encoder's large 1x1 convolutions as int8 matrix products (quantization mode "fast").

Dynamic int8 leaves MobileNetV2's convolutions in float32 (onnxruntime's `ConvInteger` runs 5x slower than its
float32 `Conv`), and they are 91% of the "both" encoder's time; its most expensive are the 1x1 convolutions of the
last stage, which run on the super-resolved branch's 8x8 grid. A 1x1 convolution is a matrix product over the
pixels, so here each one with at least `MIN_FAST_WEIGHTS` weights becomes `Transpose` (to channels last) ->
`MatMul` -> `Add` (bias) -> `Transpose` before quantizing: the dynamic quantizer then makes it an int8 product
(`DynamicQuantizeMatMul`, activations quantized at run time like the decoder's), which onnxruntime runs with its
int8 GEMM kernels. Rounding these weights to the nearest int8 changes too many captions (86.7% of 300 dev photos
identical to float32, "both", greedy); their codes are therefore replaced by GPTQ's (`gptq.py`), calibrated on
training photos: 91.6% / 90.0% of all 1,000 dev captions identical (greedy / beam 3, the model shipped until
2026-11-30; `benchmarks/onnx_int8_dev_2026-11-29.md`). The run-time int8 input gets one scale for the whole
tensor, set by its widest channels; `smooth_products` first moves part of each input channel's range into the
weight (SmoothQuant), so the narrow channels are rounded less.

Measured on the shipped model, one thread (`benchmarks/latency_cpu.md`, `benchmarks/onnx_profile.md`): a "both"
caption 10.1-11.3 -> 8.7-9.2 ms (three runs), its encoder 6.8 -> 5.3 ms. For `lr` it saves 0.3 ms but keeps only
86.7-89.7% of the captions of 300 dev photos (its 4x4 grid gives the run-time activation scales few pixels): the
mode is for "both".
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .gptq import gptq

#: The smallest 1x1 convolution (in weights) made an int8 product: MobileNetV2's last stage (layers 13-16, 1x1 head).
MIN_FAST_WEIGHTS = 100_000
#: What the float32 weight of a rewritten convolution is called in the rewritten graph (the quantizer adds its
#: `_quantized`, `_scale` and `_zero_point` initializers to this name).
MATMUL_WEIGHT = "{}.matmul"
#: SmoothQuant's migration strength for the products' inputs (`smooth_products`). Measured on the shipped model with
#: one-off exports of the fast "both" encoder paired with the float32 decoder (as `scripts/int8_graph_swap.py` pairs
#: them; 1,000 dev photos, batch 1), captions identical to float32, greedy / beam 3: 0.3 94.4% / 92.6%, none 93.7% /
#: 91.7%, 0.5 91.7% / 90.8%, 0.8 89.3% / 88.3%.
SMOOTHING_ALPHA = 0.3
#: The name of a smoothed product's 1/s factors (per input channel, float32), from its convolution's weight name.
SMOOTHING = "{}.smoothing"


def pointwise_as_matmul(model: onnx.ModelProto) -> list[str]:
    """Rewrite, in place, each 1x1 convolution (stride 1, no padding, one group) whose float32 weight has at least
    `MIN_FAST_WEIGHTS` values as a channels-last matrix product; returns the weights rewritten. A weight that
    several convolutions read (the two SOLI branches) becomes one (in, out) matrix that all their products read."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    rewritten, nodes = {}, []
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" else None
        if weight is None or not _is_large_pointwise(node, weight):
            nodes.append(node)
            continue
        name, output = MATMUL_WEIGHT.format(weight.name), node.output[0]
        if weight.name not in rewritten:
            matrix = numpy_helper.to_array(weight).reshape(weight.dims[0], -1)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix.T), name))
            rewritten[weight.name] = name
        product = f"{output}.channels_last"
        nodes.append(helper.make_node("Transpose", [node.input[0]], [f"{output}.pixels"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("MatMul", [f"{output}.pixels", name], [product], name=f"{output}_MatMul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [f"{output}.biased"]))
            product = f"{output}.biased"
        nodes.append(helper.make_node("Transpose", [product], [output], perm=[0, 3, 1, 2]))
    del graph.node[:]
    graph.node.extend(nodes)
    read = {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in read]:
        graph.initializer.remove(tensor)
    return list(rewritten)


def smooth_products(
    model: onnx.ModelProto, maxima: dict[str, np.ndarray], alpha: float = SMOOTHING_ALPHA
) -> dict[str, np.ndarray]:
    """Even out, in place, the input channels of the products `pointwise_as_matmul` made of the weights in `maxima`
    (each input channel's largest absolute value on the calibration images): SmoothQuant (Xiao et al. 2023). Each
    product's input is multiplied by 1/s (a `Mul` before the product) and its weight's rows by s, so the float32
    graph computes the same; s_j = max|x_j|^alpha / max_k |w_jk|^(1 - alpha), scaled to a geometric mean of 1.
    The one uint8 scale that the product's input gets at run time then rounds the small channels less. Returns s
    per weight."""
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    factors, weight_of = {}, {}
    for weight, largest in maxima.items():
        name = MATMUL_WEIGHT.format(weight)
        matrix = numpy_helper.to_array(initializers[name])  # (in, out)
        factor = np.maximum(largest, 1e-5) ** alpha / np.maximum(np.abs(matrix).max(axis=1), 1e-5) ** (1 - alpha)
        factor = factor / np.exp(np.mean(np.log(factor)))
        graph.initializer.remove(initializers[name])
        graph.initializer.append(numpy_helper.from_array((matrix * factor[:, None]).astype(np.float32), name))
        graph.initializer.append(numpy_helper.from_array((1 / factor).astype(np.float32), SMOOTHING.format(weight)))
        factors[weight], weight_of[name] = factor, weight
    nodes = []
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weight_of:
            smoothed = f"{node.output[0]}.smoothed_input"
            nodes.append(
                helper.make_node("Mul", [node.input[0], SMOOTHING.format(weight_of[node.input[1]])], [smoothed])
            )
            node.input[0] = smoothed
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return factors


def use_gptq_codes(
    quantized: onnx.ModelProto,
    float32: onnx.ModelProto,
    moments: dict[str, np.ndarray],
    smoothing: dict[str, np.ndarray] | None = None,
) -> None:
    """Replace, in place, the int8 codes and scales that the dynamic quantizer gave the products of the weights in
    `moments` in `quantized` by GPTQ's, for inputs of those second moments (`gptq.input_statistics` of the
    convolutions' inputs in the `float32` encoder); `smoothing`: `smooth_products`'s factors where it ran."""
    initializers = {tensor.name: tensor for tensor in quantized.graph.initializer}
    matrices = {
        tensor.name: numpy_helper.to_array(tensor) for tensor in float32.graph.initializer if tensor.name in moments
    }
    for weight, moment in moments.items():
        codes_name, scale_name = MATMUL_WEIGHT.format(weight) + "_quantized", MATMUL_WEIGHT.format(weight) + "_scale"
        if codes_name not in initializers or initializers[codes_name].data_type != onnx.TensorProto.INT8:
            raise ValueError(f"fast quantization: the quantizer left {weight} without int8 codes ({codes_name})")
        matrix = matrices[weight].reshape(len(matrices[weight]), -1)  # (out, in)
        if smoothing is not None:
            matrix, moment = matrix * smoothing[weight], moment / np.outer(smoothing[weight], smoothing[weight])
        codes, scales = gptq(matrix, moment)
        for name, array in ((codes_name, np.ascontiguousarray(codes.T)), (scale_name, scales)):
            quantized.graph.initializer.remove(initializers[name])
            quantized.graph.initializer.append(numpy_helper.from_array(array, name))


def _is_large_pointwise(node: onnx.NodeProto, weight: onnx.TensorProto) -> bool:
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    return (
        weight.data_type == onnx.TensorProto.FLOAT
        and list(weight.dims[2:]) == [1, 1]
        and int(np.prod(weight.dims)) >= MIN_FAST_WEIGHTS
        and attributes.get("group", 1) == 1
        and all(stride == 1 for stride in attributes.get("strides", [1, 1]))
        and not any(attributes.get("pads", [0, 0, 0, 0]))
    )
