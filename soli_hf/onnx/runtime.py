"""Caption images with SOLI's ONNX graphs: numpy, pillow and onnxruntime only (no torch, no transformers).

`SoliOnnxCaptioner(onnx_dir).caption(images)` reproduces, token for token, what `SoliProcessor` +
`SoliForConditionalGeneration.generate()` + `batch_decode(skip_special_tokens=True)` give for the same model:

- preprocessing mirrors `soli_hf/image_processing_soli.py` (which imports transformers, so it is not imported
  here) and gives bit-identical `pixel_values`;
- decoding mirrors transformers' greedy search and beam search (`GenerationMixin._sample` / `_beam_search`,
  transformers 5.x), including `no_repeat_ngram_size`, `suppress_tokens`, the length penalty, `early_stopping`,
  its "no better beam possible" stop, and the padding of finished sequences (`pad_token_id`, or in beam search
  `eos_token_id` when the pad id is 0, as `generate()` does).

This file is self-contained (standard library, numpy, pillow, onnxruntime). `import soli_hf` loads torch, so a
torch-free process loads this file by path, e.g. the copy that `export_onnx` writes beside the graphs:

```python
import importlib.util, sys

spec = importlib.util.spec_from_file_location("soli_onnx_runtime", "onnx_dir/soli_onnx_runtime.py")
runtime = sys.modules["soli_onnx_runtime"] = importlib.util.module_from_spec(spec)  # dataclasses need the entry
spec.loader.exec_module(runtime)
captions = runtime.SoliOnnxCaptioner("onnx_dir").caption(["photo.jpg"])
```
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageFilter, UnidentifiedImageError

MANIFEST_NAME = "soli_onnx.json"
MANIFEST_VERSION = 1
_NEG = np.float32(-1.0e9)  # the "impossible" score of transformers' beam search, in its float32 arithmetic
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_MAX_BATCH_DIMS = 4

# ---------------------------------------------------------------------------------------------------------------
# Preprocessing: the same operations, in the same order, as SoliImageProcessor.preprocess (no HR image, no JPEG).
# ---------------------------------------------------------------------------------------------------------------


def _describe(image: Any) -> str:
    """A short name of an input for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    shape = getattr(image, "shape", None)
    if shape is not None:
        return f"{type(image).__name__} of shape {tuple(shape)}"
    if isinstance(image, Image.Image):
        return f"PIL image (mode {image.mode}, size {image.size})"
    return type(image).__name__


def _open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, raising `ValueError` naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise ValueError(f"{os.fspath(path)}: image file not found") from error
    except UnidentifiedImageError as error:
        raise ValueError(f"{os.fspath(path)}: not an image file PIL can read") from error
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{os.fspath(path)}: cannot decode image ({error})") from error


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Scale an HxWxC array of any numeric dtype to uint8 (floats are read as [0, 1], or [0, 255] if larger)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: image contains NaN or infinite values")
        top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(array.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"{name}: unsupported array dtype {array.dtype}")


def _array_to_pil(array: np.ndarray, name: str, channels_first: bool) -> Image.Image:
    """An HxW, HxWxC or CxHxW array (C in 1, 3, 4) as an RGB PIL image."""
    if array.size == 0:
        raise ValueError(f"{name}: image has no pixels")
    if array.ndim == 3 and channels_first and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected HxW, HxWxC or CxHxW with C in (1, 3, 4)")
    pixels = _array_to_uint8(np.ascontiguousarray(array), name)
    return _pil_to_rgb(Image.fromarray(pixels, mode="RGBA" if pixels.shape[-1] == 4 else "RGB"), name)


def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Any PIL mode as RGB: 16/32-bit and float images are rescaled, transparency is composited on white."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name}: image has no pixels")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _array_to_pil(np.asarray(image), name, channels_first=False)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"{name}: cannot convert PIL mode {image.mode!r} to RGB") from error


def to_rgb_image(image: Any) -> Image.Image:
    """One image (path, PIL image of any mode, numpy HxW / HxWxC / CxHxW array) as an RGB PIL image."""
    name = _describe(image)
    if isinstance(image, (str, os.PathLike)):
        return _pil_to_rgb(_open_image(image), name)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, name)
    if isinstance(image, np.ndarray):
        channels_first = image.ndim == 3 and image.shape[-1] not in (1, 3, 4)
        return _array_to_pil(image, name, channels_first=channels_first)
    raise ValueError(f"unsupported image input of type {type(image).__name__} (expected a path, PIL image or array)")


def make_image_list(images: Any) -> list[Any]:
    """Flatten a single image, a list of images or a batched (4-D) array into a list of images."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images: got an empty list")
        return [single for item in images for single in make_image_list(item)]
    if isinstance(images, np.ndarray):
        if images.size == 0:
            raise ValueError(f"images: {_describe(images)} has no pixels")
        if images.ndim > _MAX_BATCH_DIMS or images.ndim < 2:
            raise ValueError(
                f"images: {_describe(images)} has {images.ndim} dimensions; expected an image (2-D or 3-D) "
                "or a batch of images (4-D)"
            )
        if images.ndim == _MAX_BATCH_DIMS:
            return list(images)
    return [images]


def _step_resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Downscale in steps of at most 2x (bilinear), the 'step' degradation."""
    while image.width >= 2 * size[0] and image.height >= 2 * size[1]:
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    return image.resize(size, Image.Resampling.BILINEAR)


def _degrade(image: Image.Image, size: tuple[int, int], degradation: str, blur_sigma: float) -> Image.Image:
    """Downscale `image` to `size` (width, height) with the named degradation."""
    if degradation == "bicubic":
        return image.resize(size, Image.Resampling.BICUBIC)
    if degradation == "bilinear":
        return image.resize(size, Image.Resampling.BILINEAR)
    if degradation == "step":
        return _step_resize(image, size)
    if degradation == "step_gaussian":
        return _step_resize(image.filter(ImageFilter.GaussianBlur(blur_sigma)), size)
    raise ValueError(f"unknown degradation {degradation!r} in {MANIFEST_NAME}")


def make_low_resolution(
    image: Image.Image, image_size: int, degradation: str, scale_factor: float | None, blur_sigma: float
) -> Image.Image:
    """The LR view of an RGB image, `image_size` x `image_size` (see `SoliImageProcessor`)."""
    if scale_factor is None:
        target = (image_size, image_size)
    else:
        target = (max(1, round(image.width * scale_factor)), max(1, round(image.height * scale_factor)))
    if image.width > target[0] or image.height > target[1]:
        image = _degrade(image, target, degradation, blur_sigma)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def preprocess(images: Any, settings: dict[str, Any]) -> np.ndarray:
    """`pixel_values` (B, 3, S, S) float32 for any images, with the `preprocessing` settings of the manifest."""
    if images is None:
        raise ValueError("images: got None")
    mean = np.asarray(settings["image_mean"], dtype=np.float32)
    std = np.asarray(settings["image_std"], dtype=np.float32)
    rows = []
    for image in make_image_list(images):
        low = make_low_resolution(
            to_rgb_image(image),
            settings["image_size"],
            settings["degradation"],
            settings["scale_factor"],
            settings["blur_sigma"],
        )
        array = (np.asarray(low, dtype=np.float32) / 255.0 - mean) / std
        rows.append(np.ascontiguousarray(array.transpose(2, 0, 1)))
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

    @classmethod
    def from_manifest(cls, values: dict[str, Any]) -> GenerationSettings:
        """Read the manifest's `generation` entry."""
        return cls(**{**values, "suppress_tokens": tuple(values["suppress_tokens"])})

    def validated(self) -> GenerationSettings:
        """Self, or `ValueError` naming a setting out of range."""
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise ValueError(f"num_beams must be a positive integer, got {self.num_beams!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        return self


class DecoderSession:
    """The decoder-step graph with its per-row state: memory and keys fixed, (h, c) advanced by `step`."""

    def __init__(self, session: ort.InferenceSession, names: list[str], encoded: list[np.ndarray]) -> None:
        self.session, self.names = session, names
        self.memory, self.keys, self.hidden, self.cell = encoded

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row; returns the next-token log-probabilities (rows, vocab)."""
        inputs = (input_ids.astype(np.int64), self.memory, self.keys, self.hidden, self.cell)
        log_probs, self.hidden, self.cell = self.session.run(None, dict(zip(self.names, inputs)))
        return log_probs

    def reorder(self, rows: np.ndarray) -> None:
        """Continue each row from the state of row `rows[i]` (beam search's cache reordering)."""
        self.hidden, self.cell = self.hidden[rows], self.cell[rows]


def _process_scores(sequences: np.ndarray, scores: np.ndarray, settings: GenerationSettings) -> np.ndarray:
    """transformers' NoRepeatNGramLogitsProcessor and SuppressTokensLogitsProcessor (both set -inf)."""
    scores = scores.copy()
    size, length = settings.no_repeat_ngram_size, sequences.shape[1]
    if size > 0 and length >= size:
        # A window of `size` tokens whose first size-1 tokens equal the last size-1 generated bans its last token.
        windows = np.lib.stride_tricks.sliding_window_view(sequences, size, axis=1)
        prefix = sequences[:, length + 1 - size :]
        rows, starts = np.nonzero((windows[..., :-1] == prefix[:, None, :]).all(axis=-1))
        scores[rows, windows[rows, starts, -1]] = -np.inf
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


def read_manifest(onnx_dir: str | os.PathLike) -> dict[str, Any]:
    """`soli_onnx.json` of an export folder, checked to name graph files that exist."""
    folder = Path(onnx_dir)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"onnx_dir {folder}: no {MANIFEST_NAME} (write the folder with export_onnx)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, expected {MANIFEST_VERSION}")
    for graph in manifest["graphs"].values():
        if not (folder / graph["file"]).is_file():
            raise ValueError(f"onnx_dir {folder}: missing {graph['file']} named in {MANIFEST_NAME}")
    return manifest


class SoliOnnxCaptioner:
    """SOLI on onnxruntime (CPU): images in, captions out, as `generate()` + `batch_decode` give them.

    Args:
        onnx_dir: a folder written by `soli_hf.onnx.export.export_onnx`.
        num_threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    Example:

    ```python
    >>> captioner = SoliOnnxCaptioner("onnx/soli-flickr8k-lr64")
    >>> captioner.caption(["dog.jpg", "beach.png"], num_beams=3)
    ```
    """

    def __init__(self, onnx_dir: str | os.PathLike, num_threads: int | None = None) -> None:
        folder = Path(onnx_dir)
        self.manifest = read_manifest(folder)
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        graphs = self.manifest["graphs"]
        self.sessions = {
            key: ort.InferenceSession(str(folder / graph["file"]), options, providers=["CPUExecutionProvider"])
            for key, graph in graphs.items()
        }
        self._input_names = {key: [spec["name"] for spec in graph["inputs"]] for key, graph in graphs.items()}
        self.generation = GenerationSettings.from_manifest(self.manifest["generation"]).validated()
        self.vocabulary: list[str] = self.manifest["vocabulary"]
        self._skip = set(self.manifest["skip_token_ids"])

    def preprocess(self, images: Any) -> np.ndarray:
        """`pixel_values` (B, 3, S, S), identical to `SoliImageProcessor(images)["pixel_values"]`."""
        return preprocess(images, self.manifest["preprocessing"])

    def encode(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        """Memory, attention keys and the decoder's initial hidden and cell state for `pixel_values`."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        return self.sessions["encoder"].run(None, dict(zip(self._input_names["encoder"], [pixel_values])))

    def decoder_session(self, encoded: list[np.ndarray], num_beams: int = 1) -> DecoderSession:
        """A decoder over `encode()`'s outputs, each image's row repeated `num_beams` times (image-major)."""
        rows = [np.repeat(array, num_beams, axis=0) for array in encoded]
        return DecoderSession(self.sessions["decoder_step"], self._input_names["decoder_step"], rows)

    def generate(
        self, pixel_values: np.ndarray, num_beams: int | None = None, max_new_tokens: int | None = None
    ) -> np.ndarray:
        """Token ids (B, length) starting with the start token, like `model.generate(pixel_values=...)`."""
        settings = self.settings(num_beams, max_new_tokens)
        encoded = self.encode(pixel_values)
        decoder = self.decoder_session(encoded, settings.num_beams)
        search = greedy_search if settings.num_beams == 1 else beam_search
        return search(decoder, encoded[0].shape[0], settings)

    def settings(self, num_beams: int | None = None, max_new_tokens: int | None = None) -> GenerationSettings:
        """The manifest's generation defaults with the given overrides."""
        overrides = {"num_beams": num_beams, "max_new_tokens": max_new_tokens}
        return replace(self.generation, **{k: v for k, v in overrides.items() if v is not None}).validated()

    def decode(self, sequences: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """Captions from token ids, as `batch_decode(..., skip_special_tokens=True)`: the words of all
        non-special ids joined by single spaces."""
        return [" ".join(self.vocabulary[i] for i in map(int, ids) if i not in self._skip) for ids in sequences]

    def caption(self, images: Any, num_beams: int | None = None, max_new_tokens: int | None = None) -> list[str]:
        """One caption per image (paths, PIL images, numpy arrays, lists of them or a 4-D batch array)."""
        return self.decode(self.generate(self.preprocess(images), num_beams, max_new_tokens))
