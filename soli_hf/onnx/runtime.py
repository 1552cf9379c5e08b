"""Caption images with SOLI's ONNX graphs: numpy, pillow and onnxruntime only (no torch, no transformers).

`SoliOnnxCaptioner(onnx_dir).caption(images)` reproduces, token for token, what `SoliProcessor` +
`SoliForConditionalGeneration.generate()` + `batch_decode(skip_special_tokens=True)` give for the same model:

- preprocessing runs the same `soli_hf.image_transforms_soli` functions as `SoliImageProcessor`, so
  `pixel_values` are bit-identical;
- decoding mirrors transformers' greedy search and beam search (`GenerationMixin._sample` / `_beam_search`,
  transformers 5.x), including `no_repeat_ngram_size`, `suppress_tokens`, `min_new_tokens`, the length penalty,
  `early_stopping`, its "no better beam possible" stop, and the padding of finished sequences (`pad_token_id`,
  or in beam search `eos_token_id` when the pad id is 0, as `generate()` does).

A damaged graph file or manifest gives a `ValueError` naming the file (and the manifest key) and saying to re-export
(`manifest.py`). Without `num_threads`, onnxruntime uses one thread per CPU the process may run on when that is
fewer than the machine has (`cpus.py`: CPU affinity, cgroup quota).

This module needs only numpy, pillow and onnxruntime. Where torch and transformers are not installed (a
Raspberry Pi: `pip install --no-deps soli-hf` plus `numpy pillow onnxruntime`), `import soli_hf` skips the
PyTorch model and this module is all there is; `SOLI_HF_NO_TORCH=1` does the same where they are installed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

from ..image_transforms_soli import (
    make_image_list,
    make_low_resolution,
    min_decoded_side,
    normalize_pixels,
    to_rgb_image,
)
from .cpus import available_cpus
from .manifest import REEXPORT, read_manifest
from .spec import GREEDY_KEY, MANIFEST_NAME

_NEG = np.float32(-1.0e9)  # the "impossible" score of transformers' beam search, in its float32 arithmetic
#: What onnxruntime raises for a graph file it cannot load (not protobuf, truncated, empty, an invalid graph).
_GRAPH_LOAD_ERRORS = (InvalidProtobuf, InvalidArgument, InvalidGraph, Fail)


def preprocess(images: Any, settings: dict[str, Any]) -> np.ndarray:
    """`pixel_values` (B, 3, S, S) float32 for any images, with the `preprocessing` settings of the manifest
    (the steps of `SoliImageProcessor.preprocess`, from the same `image_transforms_soli` functions)."""
    if images is None:
        raise ValueError("images: got None")
    rows = []
    min_side = min_decoded_side(settings["image_size"], settings["degradation"], settings["scale_factor"])
    for image in make_image_list(images):
        low = make_low_resolution(
            to_rgb_image(image, min_side=min_side, input_range=settings.get("input_range")),
            settings["image_size"],
            settings["degradation"],
            settings["scale_factor"],
            settings["blur_sigma"],
        )
        rows.append(normalize_pixels(low, settings["image_mean"], settings["image_std"]))
    return np.stack(rows)


# ---------------------------------------------------------------------------------------------------------------
# Decoding: transformers' greedy and beam search over a step function, in numpy (float32 like generate()).
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    """The decoding settings (the `generation` entry of the manifest, as `generate()` resolves them)."""

    decoder_start_token_id: int
    eos_token_id: int
    pad_token_id: int
    num_beams: int
    max_new_tokens: int
    no_repeat_ngram_size: int
    suppress_tokens: tuple[int, ...]
    length_penalty: float
    early_stopping: bool | str
    min_new_tokens: int = 0

    @classmethod
    def from_manifest(cls, values: dict[str, Any]) -> GenerationSettings:
        """Read the manifest's `generation` entry; `ValueError` for a setting this runtime does not know."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown generation settings {unknown}; this runtime reproduces {sorted(known)}")
        return cls(**{**values, "suppress_tokens": tuple(values["suppress_tokens"])})

    def validated(self) -> GenerationSettings:
        """Self, or `ValueError` naming a setting out of range."""
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {self.num_beams!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        return self


_OVERRIDABLE = ("num_beams", "max_new_tokens", "min_new_tokens")


class DecoderSession:
    """The decoder-step graph with its per-row state: memory and keys fixed, (h, c) advanced by `step`."""

    def __init__(self, session: ort.InferenceSession, names: list[str], encoded: list[np.ndarray]) -> None:
        self.session, self.names = session, names
        self.memory, self.keys, self.hidden, self.cell = encoded

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row; returns the next-token log-probabilities (rows, vocab)."""
        inputs = (input_ids.astype(np.int64), self.memory, self.keys, self.hidden, self.cell)
        log_probs, self.hidden, self.cell = self.session.run(None, dict(zip(self.names, inputs, strict=True)))
        return log_probs

    def reorder(self, rows: np.ndarray) -> None:
        """Continue each row from the state of row `rows[i]` (beam search's cache reordering)."""
        self.hidden, self.cell = self.hidden[rows], self.cell[rows]


def _process_scores(sequences: np.ndarray, scores: np.ndarray, settings: GenerationSettings) -> np.ndarray:
    """transformers' NoRepeatNGramLogitsProcessor, MinNewTokensLengthLogitsProcessor and
    SuppressTokensLogitsProcessor (all set -inf, so their order does not matter)."""
    scores = scores.copy()
    if sequences.shape[1] - 1 < settings.min_new_tokens:
        scores[:, settings.eos_token_id] = -np.inf
    size, length = settings.no_repeat_ngram_size, sequences.shape[1]
    if size > 0 and length >= size:
        # A window of `size` tokens whose first size-1 tokens equal the last size-1 generated bans its last token:
        # `matches[row, start]` compares each window's k-th token with the k-th of those last tokens, k < size-1.
        starts = length - size + 1
        matches = np.ones((sequences.shape[0], starts), dtype=bool)
        for k in range(size - 1):
            matches &= sequences[:, k : k + starts] == sequences[:, starts + k, None]
        rows, window_starts = np.nonzero(matches)
        scores[rows, sequences[rows, window_starts + size - 1]] = -np.inf
    if settings.suppress_tokens:
        scores[:, list(settings.suppress_tokens)] = -np.inf
    return scores


def greedy_search(decoder: DecoderSession, batch_size: int, settings: GenerationSettings) -> np.ndarray:
    """`generate(num_beams=1)`: argmax each step; finished rows continue with `pad_token_id`."""
    sequences = np.full((batch_size, 1), settings.decoder_start_token_id, dtype=np.int64)
    unfinished = np.ones(batch_size, dtype=bool)
    max_length = 1 + settings.max_new_tokens
    while True:
        scores = _process_scores(sequences, decoder.step(sequences[:, -1]), settings)
        next_tokens = np.where(unfinished, scores.argmax(axis=-1), settings.pad_token_id)
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)
        unfinished &= next_tokens != settings.eos_token_id
        if not unfinished.any() or sequences.shape[1] >= max_length:
            return sequences


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores of each row, best first (like `torch.topk(...)[1]`)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def _gather(array: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`array[b, indices[b, j], ...]` for every batch row b (transformers' `_gather_beams`)."""
    return array[np.arange(array.shape[0])[:, None], indices]


def beam_search(decoder: DecoderSession, batch_size: int, settings: GenerationSettings) -> np.ndarray:
    """`generate(num_beams=k)`, the best beam of each image, as transformers' `_beam_search` computes it.

    `decoder` rows are image-major (`b * num_beams + beam`). Variable names follow transformers'.
    """
    beams, eos = settings.num_beams, settings.eos_token_id
    max_length, prompt_len, cur_len = 1 + settings.max_new_tokens, 1, 1
    beams_to_keep = 2 * beams  # max(2, 1 + number of eos ids) * num_beams, with one eos id
    top_num_beam_mask = np.arange(beams_to_keep) < beams
    fill = settings.pad_token_id or eos  # generate() pads finished beams with eos when the pad id is 0
    running_sequences = np.full((batch_size, beams, max_length), fill, dtype=np.int64)
    running_sequences[:, :, 0] = settings.decoder_start_token_id
    sequences = running_sequences.copy()
    running_beam_scores = np.zeros((batch_size, beams), dtype=np.float32)
    running_beam_scores[:, 1:] = _NEG
    beam_scores = np.full((batch_size, beams), _NEG, dtype=np.float32)
    is_sent_finished = np.zeros((batch_size, beams), dtype=bool)
    improvable = np.ones((batch_size, 1), dtype=bool)  # is_early_stop_heuristic_unsatisfied
    running_beam_indices = np.full((batch_size, beams, max_length - prompt_len), -1, dtype=np.int64)
    beam_indices = running_beam_indices.copy()
    batch_offset = np.arange(batch_size)[:, None] * beams

    while True:
        flat_sequences = running_sequences[:, :, :cur_len].reshape(batch_size * beams, cur_len)
        log_probs = _process_scores(flat_sequences, decoder.step(flat_sequences[:, -1]), settings)
        vocab_size = log_probs.shape[-1]
        log_probs = (log_probs.reshape(batch_size, beams, vocab_size) + running_beam_scores[:, :, None]).reshape(
            batch_size, beams * vocab_size
        )

        # Top-K continuations over all beams of each image.
        topk_indices = _top_k(log_probs, beams_to_keep)
        topk_log_probs = _gather(log_probs, topk_indices)
        topk_beams, topk_ids = topk_indices // vocab_size, topk_indices % vocab_size
        topk_running_sequences = _gather(running_sequences, topk_beams)
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices = _gather(running_beam_indices, topk_beams)
        topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beams + batch_offset
        hits_stop = (topk_ids == eos) | (cur_len + 1 >= max_length)

        # The best unfinished continuations keep running.
        topk_running_log_probs = topk_log_probs + hits_stop.astype(np.float32) * _NEG
        keep = _top_k(topk_running_log_probs, beams)
        running_sequences = _gather(topk_running_sequences, keep)
        running_beam_scores = _gather(topk_running_log_probs, keep)
        running_beam_indices = _gather(topk_running_beam_indices, keep)

        # Finished continuations among the top `num_beams` compete with the finished hypotheses so far.
        just_finished = hits_stop & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / np.float32((cur_len + 1 - prompt_len) ** settings.length_penalty)
        beams_full = is_sent_finished.all(axis=-1, keepdims=True) & (settings.early_stopping is True)
        finished_scores += beams_full.astype(np.float32) * _NEG
        finished_scores += (~improvable).astype(np.float32) * _NEG
        finished_scores += (~just_finished).astype(np.float32) * _NEG
        best = _top_k(np.concatenate([beam_scores, finished_scores], axis=1), beams)
        sequences = _gather(np.concatenate([sequences, topk_running_sequences], axis=1), best)
        beam_scores = _gather(np.concatenate([beam_scores, finished_scores], axis=1), best)
        beam_indices = _gather(np.concatenate([beam_indices, topk_running_beam_indices], axis=1), best)
        is_sent_finished = _gather(np.concatenate([is_sent_finished, just_finished], axis=1), best)

        decoder.reorder(running_beam_indices[:, :, cur_len - prompt_len].reshape(-1))
        cur_len += 1
        if settings.early_stopping == "never" and settings.length_penalty > 0.0:
            best_length = max_length - prompt_len
        else:
            best_length = cur_len - prompt_len
        best_running = running_beam_scores[:, :1] / np.float32(best_length**settings.length_penalty)
        worst_finished = np.where(is_sent_finished, beam_scores.min(axis=1, keepdims=True), _NEG)
        improvable &= (best_running > worst_finished).any(axis=-1, keepdims=True)
        open_beam = not (is_sent_finished.all() and settings.early_stopping is True)
        if not (improvable.any() and open_beam and not hits_stop.all()):
            break

    generated = (beam_indices[:, 0] != -1).sum(axis=1).max()
    return sequences[:, 0, : prompt_len + generated]


# ---------------------------------------------------------------------------------------------------------------
# The captioner.
# ---------------------------------------------------------------------------------------------------------------


def session_options(num_threads: int | None = None) -> ort.SessionOptions:
    """onnxruntime session options with `num_threads` intra-op threads (and one inter-op thread).

    When None: one thread per CPU the process may run on (`cpus.available_cpus`: its CPU affinity, a cgroup CPU
    quota) where that is fewer than the machine's CPUs, else onnxruntime's default (one per physical core).
    """
    options = ort.SessionOptions()
    if num_threads is None and available_cpus() < (os.cpu_count() or 1):
        num_threads = available_cpus()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return options


def load_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """An onnxruntime CPU session of the graph at `path`; `ValueError` naming the file when it cannot be loaded."""
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _GRAPH_LOAD_ERRORS as error:
        message = f"{path}: damaged or not an ONNX graph, onnxruntime cannot load it ({error}); {REEXPORT}"
        raise ValueError(message) from error


class SoliOnnxCaptioner:
    """SOLI on onnxruntime (CPU): images in, captions out, as `generate()` + `batch_decode` give them.

    Args:
        onnx_dir: a folder written by `soli_hf.onnx.export.export_onnx`.
        num_threads: onnxruntime intra-op threads (default: see `session_options`: never more than the CPUs the
            process may run on).

    Raises:
        ValueError: for a folder that is not a complete export, naming the damaged or missing file (and the
            manifest key).

    Example:

    ```python
    >>> captioner = SoliOnnxCaptioner("onnx/soli-flickr8k-lr64")
    >>> captioner.caption(["dog.jpg", "beach.png"], num_beams=3)
    ```
    """

    def __init__(self, onnx_dir: str | os.PathLike, num_threads: int | None = None) -> None:
        folder = Path(onnx_dir)
        self.manifest = read_manifest(folder)
        options = session_options(num_threads)
        graphs = self.manifest["graphs"]
        self.sessions = {key: load_session(folder / graph["file"], options) for key, graph in graphs.items()}
        #: Each graph's input names, in call order.
        self.input_names = {key: [spec["name"] for spec in graph["inputs"]] for key, graph in graphs.items()}
        try:
            self.generation = GenerationSettings.from_manifest(self.manifest["generation"]).validated()
        except ValueError as error:
            raise ValueError(f"{folder / MANIFEST_NAME}: generation: {error}; {REEXPORT}") from error
        self.vocabulary: list[str] = self.manifest["vocabulary"]
        self._skip = set(self.manifest["skip_token_ids"])

    def preprocess(self, images: Any) -> np.ndarray:
        """`pixel_values` (B, 3, S, S), identical to `SoliImageProcessor(images)["pixel_values"]`."""
        return preprocess(images, self.manifest["preprocessing"])

    def encode(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        """Memory, attention keys and the decoder's initial hidden and cell state for `pixel_values`."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        return self.sessions["encoder"].run(None, dict(zip(self.input_names["encoder"], [pixel_values], strict=True)))

    def decoder_session(self, encoded: list[np.ndarray], num_beams: int = 1) -> DecoderSession:
        """A decoder over `encode()`'s outputs, each image's row repeated `num_beams` times (image-major)."""
        rows = [np.repeat(array, num_beams, axis=0) for array in encoded]
        return DecoderSession(self.sessions["decoder_step"], self.input_names["decoder_step"], rows)

    def generate(self, pixel_values: np.ndarray, **overrides: int | None) -> np.ndarray:
        """Token ids (B, length) starting with the start token, like `model.generate(pixel_values=...)`;
        `overrides` (`num_beams`, `max_new_tokens`, `min_new_tokens`) replace the model's defaults."""
        return self.search(self.encode(pixel_values), **overrides)

    def search(self, encoded: list[np.ndarray], **overrides: int | None) -> np.ndarray:
        """`generate` from `encode()`'s outputs: greedy or beam search as the settings say, so that one encoding can
        serve several searches."""
        settings = self.settings(**overrides)
        if settings.num_beams == 1 and GREEDY_KEY in self.sessions:  # one call for the whole search (`greedy.py`)
            lengths = [np.array(settings.max_new_tokens, np.int64), np.array(settings.min_new_tokens, np.int64)]
            inputs = dict(zip(self.input_names[GREEDY_KEY], [*encoded, *lengths], strict=True))
            return self.sessions[GREEDY_KEY].run(None, inputs)[0]
        decoder = self.decoder_session(encoded, settings.num_beams)
        search = greedy_search if settings.num_beams == 1 else beam_search
        return search(decoder, encoded[0].shape[0], settings)

    def settings(self, **overrides: int | None) -> GenerationSettings:
        """The manifest's generation defaults with the given overrides (`None` keeps a default)."""
        unknown = sorted(set(overrides) - set(_OVERRIDABLE))
        if unknown:
            raise ValueError(f"unknown generation settings {unknown}; these can be set: {list(_OVERRIDABLE)}")
        return replace(self.generation, **{k: v for k, v in overrides.items() if v is not None}).validated()

    def decode(self, sequences: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """Captions from token ids, as `batch_decode(..., skip_special_tokens=True)`: the words of all
        non-special ids joined by single spaces."""
        return [" ".join(self.vocabulary[i] for i in map(int, ids) if i not in self._skip) for ids in sequences]

    def caption(
        self, images: Any, num_beams: int | None = None, max_new_tokens: int | None = None, **overrides: int | None
    ) -> list[str]:
        """One caption per image (paths, PIL images, numpy arrays, lists of them or a 4-D batch array);
        `num_beams`, `max_new_tokens` and `min_new_tokens` override the model's generation defaults."""
        ids = self.generate(self.preprocess(images), num_beams=num_beams, max_new_tokens=max_new_tokens, **overrides)
        return self.decode(ids)
