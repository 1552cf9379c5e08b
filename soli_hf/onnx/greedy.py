"""Greedy decoding as one ONNX graph: the decoder step inside an ONNX `Loop`, so that a greedy caption is one
onnxruntime call instead of one call per token.

`greedy_graph(decoder_step, generation, vocab_size)` builds it from a folder's `decoder_step.onnx` and the
manifest's generation settings; the fast and compact quantization modes write it as `greedy.onnx`
(`add_greedy_graph`) and `SoliOnnxCaptioner` uses it for `num_beams == 1` wherever a folder has it (the numpy beam
search keeps the step graph). The two graphs read the decoder's weights from ONE file, `decoder_weights.bin` (ONNX
external data: each weight is a byte range of it, named by both graphs), so the greedy graph adds a few kB to the
folder, not a second copy of the weights: compact mode's 10 MB budget holds it. Each iteration does what
`runtime.greedy_search` does, in the same order, so the token ids are the same:
- the step's log-probabilities, with `-inf` for the suppressed tokens, for `<eos>` while fewer than
  `min_new_tokens` tokens are generated, and for each token a no-repeat n-gram would repeat (every window of the
  token history whose first n-1 tokens equal the last n-1 bans its last one);
- the argmax, `pad_token_id` for the rows that already ended, appended to the history;
- stop when every row has ended, or after `max_new_tokens` tokens (graph inputs, like the numpy search's overrides).
Measured on the shipped "both" fast int8 model, 12 tokens, one thread (`benchmarks/onnx_profile.md`): 2.4 ms for the
whole search against 2.3 ms of decoder-step runs + 0.7 ms of numpy loop; the same 1,000 dev captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .spec import DECODER_STEP, DECODER_WEIGHTS_FILE, GREEDY_FILE, GREEDY_KEY

#: Its inputs beyond memory and attention keys, and its output (the state's names are the step's inside the loop).
INITIAL_HIDDEN, INITIAL_CELL = "initial_hidden", "initial_cell"
MAX_NEW_TOKENS, MIN_NEW_TOKENS, SEQUENCES = "max_new_tokens", "min_new_tokens", "sequences"


def greedy_graph(decoder_step: onnx.ModelProto, generation: dict[str, Any], vocab_size: int) -> onnx.ModelProto:
    """The greedy search over `decoder_step` with the manifest's `generation` settings (its start, end, padding and
    suppressed tokens and its no-repeat n-gram size; `max_new_tokens` and `min_new_tokens` are inputs).

    Inputs: the encoder's outputs (`memory`, `attention_keys`, `initial_hidden`, `initial_cell`), and the int64
    scalars `max_new_tokens`, `min_new_tokens`. Output: `sequences` (batch, 1 + generated), the start token first,
    like `generate()`'s."""
    step, vocab = decoder_step.graph, vocab_size
    eos, pad = int(generation["eos_token_id"]), int(generation["pad_token_id"])
    ids, memory, keys, hidden, cell = (tensor.name for tensor in DECODER_STEP.inputs)
    log_probs, next_hidden, next_cell = (tensor.name for tensor in DECODER_STEP.outputs)
    mask_nodes, mask_constants = _mask_nodes(
        vocab, {"suppress_mask": generation.get("suppress_tokens") or [], "eos_mask": [eos], "zero_mask": []}
    )
    constants = {
        "eos_id": np.array(eos, dtype=np.int64),
        "pad_id": np.array(pad, dtype=np.int64),
        "last": np.array([-1], dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
    }
    body_nodes = [
        helper.make_node("Gather", ["history", "last"], ["last_column"], axis=1),
        helper.make_node("Squeeze", ["last_column", "axis1"], [ids]),
        *step.node,
        helper.make_node("Add", [log_probs, "suppress_mask"], ["suppressed"]),
        helper.make_node("Less", ["iteration", MIN_NEW_TOKENS], ["too_short"]),
        helper.make_node("Where", ["too_short", "eos_mask", "zero_mask"], ["length_mask"]),
        helper.make_node("Add", ["suppressed", "length_mask"], ["scores_no_ngram"]),
        *_no_repeat_ngram_nodes(int(generation.get("no_repeat_ngram_size") or 0), "scores_no_ngram", "scores"),
        helper.make_node("ArgMax", ["scores"], ["best"], axis=1, keepdims=0),
        helper.make_node("Where", ["unfinished", "best", "pad_id"], ["next_token"]),
        helper.make_node("Unsqueeze", ["next_token", "axis1"], ["next_column"]),
        helper.make_node("Concat", ["history", "next_column"], ["next_history"], axis=1),
        helper.make_node("Equal", ["next_token", "eos_id"], ["ended"]),
        helper.make_node("Not", ["ended"], ["not_ended"]),
        helper.make_node("And", ["unfinished", "not_ended"], ["next_unfinished"]),
        helper.make_node("Cast", ["next_unfinished"], ["unfinished_as_int"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["unfinished_as_int"], ["any_unfinished"], keepdims=0),
        helper.make_node("Cast", ["any_unfinished"], ["keep_going"], to=TensorProto.BOOL),
    ]
    added = [*mask_nodes, *body_nodes[:2], *body_nodes[2 + len(step.node) :]]
    _check_names_free(step, added, constants | mask_constants)
    body = helper.make_graph(
        body_nodes,
        "greedy_step",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("condition", TensorProto.BOOL, []),
            helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", None]),
            helper.make_tensor_value_info(hidden, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info(cell, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info("unfinished", TensorProto.BOOL, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("keep_going", TensorProto.BOOL, []),
            helper.make_tensor_value_info("next_history", TensorProto.INT64, ["batch", None]),
            helper.make_tensor_value_info(next_hidden, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info(next_cell, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info("next_unfinished", TensorProto.BOOL, ["batch"]),
        ],
    )
    start = np.array([[int(generation["decoder_start_token_id"])]], dtype=np.int64)
    outer_nodes = [
        *mask_nodes,
        helper.make_node("Shape", [INITIAL_HIDDEN], ["state_shape"]),
        helper.make_node("Gather", ["state_shape", "zero_index"], ["batch_size"], axis=0),
        helper.make_node("Concat", ["batch_size", "one_column"], ["start_shape"], axis=0),
        helper.make_node("Expand", ["start_token", "start_shape"], ["start_history"]),
        helper.make_node("Expand", ["true", "batch_size"], ["all_unfinished"]),
        helper.make_node(
            "Loop",
            [MAX_NEW_TOKENS, "true", "start_history", INITIAL_HIDDEN, INITIAL_CELL, "all_unfinished"],
            [SEQUENCES, "final_hidden", "final_cell", "final_unfinished"],
            body=body,
        ),
    ]
    outer_constants = {
        "start_token": start,
        "zero_index": np.array([0], dtype=np.int64),
        "one_column": np.array([1], dtype=np.int64),
        "true": np.array(True),
        **mask_constants,
    }
    graph = helper.make_graph(
        outer_nodes,
        "greedy",
        [
            helper.make_tensor_value_info(memory, TensorProto.FLOAT, ["batch", None, None]),
            helper.make_tensor_value_info(keys, TensorProto.FLOAT, ["batch", None, None]),
            helper.make_tensor_value_info(INITIAL_HIDDEN, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info(INITIAL_CELL, TensorProto.FLOAT, ["batch", None]),
            helper.make_tensor_value_info(MAX_NEW_TOKENS, TensorProto.INT64, []),
            helper.make_tensor_value_info(MIN_NEW_TOKENS, TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info(SEQUENCES, TensorProto.INT64, ["batch", None])],
        initializer=[
            *step.initializer,
            *(numpy_helper.from_array(value, name) for name, value in {**constants, **outer_constants}.items()),
        ],
    )
    model = helper.make_model(graph, opset_imports=list(decoder_step.opset_import))
    model.ir_version = decoder_step.ir_version
    return model


def add_greedy_graph(folder: Path, manifest: dict[str, Any]) -> list[Path]:
    """Write `greedy.onnx` into an export folder from its `decoder_step.onnx` and `manifest["generation"]`, both
    graphs reading the decoder's weights from one `decoder_weights.bin` (the step graph is rewritten in place to read
    them from there), and name them under `manifest["graphs"]` (the caller writes the manifest); returns the two
    files it added."""
    step_path, greedy_path, weights_path = (
        folder / DECODER_STEP.file_name,
        folder / GREEDY_FILE,
        folder / DECODER_WEIGHTS_FILE,
    )
    onnx.save_model(
        onnx.load(step_path),
        step_path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DECODER_WEIGHTS_FILE,
        size_threshold=1024,
    )
    # Read back without the data: the initializers are byte ranges of the weights file, and stay so in the new graph.
    step = onnx.load(step_path, load_external_data=False)
    onnx.save_model(greedy_graph(step, manifest["generation"], len(manifest["vocabulary"])), greedy_path)
    names = ["memory", "attention_keys", INITIAL_HIDDEN, INITIAL_CELL, MAX_NEW_TOKENS, MIN_NEW_TOKENS]
    manifest["graphs"][DECODER_STEP.key] = {**manifest["graphs"][DECODER_STEP.key], "weights": DECODER_WEIGHTS_FILE}
    manifest["graphs"][GREEDY_KEY] = {
        "file": GREEDY_FILE,
        "weights": DECODER_WEIGHTS_FILE,
        "inputs": [{"name": name} for name in names],
        "outputs": [{"name": SEQUENCES, "dtype": "int64", "shape": ["batch", "sequence"]}],
    }
    return [greedy_path, weights_path]


def _no_repeat_ngram_nodes(size: int, scores: str, output: str) -> list[onnx.NodeProto]:
    """Nodes that add -inf to `scores` for every token that would repeat an n-gram of `size` tokens of `history`
    (none for size 0): window w = history[:, w : w + size] matches when its first size-1 tokens equal the history's
    last size-1, and then bans its last token (the scatter keeps the minimum, so a ban is never undone)."""
    if size <= 0:
        return [helper.make_node("Identity", [scores], [output])]
    prefix = f"ngram{size}"
    nodes = [
        helper.make_node("Shape", ["history"], [f"{prefix}_shape"]),
        helper.make_node("Gather", [f"{prefix}_shape", "axis1"], [f"{prefix}_length"], axis=0),
        helper.make_node(
            "Constant", [], [f"{prefix}_size"], value=helper.make_tensor("s", TensorProto.INT64, [1], [size])
        ),
        helper.make_node("Sub", [f"{prefix}_length", f"{prefix}_size"], [f"{prefix}_windows_minus_one"]),
        helper.make_node("Add", [f"{prefix}_windows_minus_one", "axis1"], [f"{prefix}_windows_signed"]),
        helper.make_node(
            "Constant", [], [f"{prefix}_zero"], value=helper.make_tensor("z", TensorProto.INT64, [1], [0])
        ),
        # windows = max(length - size + 1, 0); slices of length `windows` (empty before the history is long enough)
        helper.make_node("Max", [f"{prefix}_windows_signed", f"{prefix}_zero"], [f"{prefix}_windows"]),
    ]
    matches = []
    for k in range(size):
        start, end = f"{prefix}_start{k}", f"{prefix}_end{k}"
        nodes += [
            helper.make_node("Constant", [], [start], value=helper.make_tensor("k", TensorProto.INT64, [1], [k])),
            helper.make_node("Add", [start, f"{prefix}_windows"], [end]),
            helper.make_node("Slice", ["history", start, end, "axis1"], [f"{prefix}_column{k}"]),
        ]
        if k == size - 1:
            continue
        # the k-th token of the last size-1 ones: history[:, length - size + 1 + k]
        position = f"{prefix}_last{k}"
        nodes += [  # clamped at 0: before the history is long enough the columns are empty and any index will do
            helper.make_node("Add", [f"{prefix}_windows_signed", start], [f"{position}_signed"]),
            helper.make_node("Max", [f"{position}_signed", f"{prefix}_zero"], [position]),
            helper.make_node("Gather", ["history", position], [f"{prefix}_token{k}"], axis=1),
            helper.make_node("Equal", [f"{prefix}_column{k}", f"{prefix}_token{k}"], [f"{prefix}_equal{k}"]),
        ]
        matches.append(f"{prefix}_equal{k}")
    if matches:
        match = matches[0]
        for k, other in enumerate(matches[1:], start=1):
            nodes.append(helper.make_node("And", [match, other], [f"{prefix}_match{k}"]))
            match = f"{prefix}_match{k}"
        nodes += [
            helper.make_node(
                "Constant", [], [f"{prefix}_inf"], value=helper.make_tensor("i", TensorProto.FLOAT, [], [-np.inf])
            ),
            helper.make_node(
                "Constant", [], [f"{prefix}_nothing"], value=helper.make_tensor("n", TensorProto.FLOAT, [], [0.0])
            ),
            helper.make_node("Where", [match, f"{prefix}_inf", f"{prefix}_nothing"], [f"{prefix}_updates"]),
        ]
    else:  # size 1: every token of the history is banned
        nodes += [
            helper.make_node("Shape", [f"{prefix}_column0"], [f"{prefix}_column_shape"]),
            helper.make_node(
                "ConstantOfShape",
                [f"{prefix}_column_shape"],
                [f"{prefix}_updates"],
                value=helper.make_tensor("i", TensorProto.FLOAT, [1], [-np.inf]),
            ),
        ]
    nodes += [
        helper.make_node("Shape", [scores], [f"{prefix}_scores_shape"]),
        helper.make_node(
            "ConstantOfShape",
            [f"{prefix}_scores_shape"],
            [f"{prefix}_blank"],
            value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]),
        ),
        helper.make_node(
            "ScatterElements",
            [f"{prefix}_blank", f"{prefix}_column{size - 1}", f"{prefix}_updates"],
            [f"{prefix}_bans"],
            axis=1,
            reduction="min",
        ),
        helper.make_node("Add", [scores, f"{prefix}_bans"], [output]),
    ]
    return nodes


def _check_names_free(step: onnx.GraphProto, added: list[onnx.NodeProto], constants: dict[str, Any]) -> None:
    """`ValueError` when a value the search adds to the loop body has the name of one of the decoder step's."""
    ours = {name for node in added for name in node.output} | set(constants)
    taken = {name for node in step.node for name in node.output} | {tensor.name for tensor in step.initializer}
    if ours & taken:
        raise ValueError(f"greedy graph: the decoder step already uses the names {sorted(ours & taken)}")


def _mask_nodes(vocab: int, masks: dict[str, list[int]]) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Nodes that make each named (vocab,) float mask, `-inf` at its tokens and 0 elsewhere, once per call of the
    graph, and the constants they read (the tokens' ids, not vocabulary-sized vectors)."""
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["vocab_shape"],
            ["mask_zeros"],
            value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0]),
        )
    ]
    constants: dict[str, np.ndarray] = {"vocab_shape": np.array([vocab], dtype=np.int64)}
    for name, tokens in masks.items():
        if not tokens:
            nodes.append(helper.make_node("Identity", ["mask_zeros"], [name]))
            continue
        constants[f"{name}_ids"] = np.array(sorted(set(tokens)), dtype=np.int64)
        constants[f"{name}_bans"] = np.full(len(set(tokens)), -np.inf, dtype=np.float32)
        nodes.append(helper.make_node("ScatterElements", ["mask_zeros", f"{name}_ids", f"{name}_bans"], [name], axis=0))
    return nodes, constants
