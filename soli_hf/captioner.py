"""One interface for captioning with any SOLI model: `Captioner` (images in -> captions, plus the LR inputs as the
model saw them), implemented by `PytorchCaptioner` (a saved folder or Hub id of any family of the package, any
device, batched `generate`) and `OnnxCaptioner` (an exported ONNX folder on onnxruntime). Everything that captions
takes one: `soli caption`, `soli evaluate`, the evaluation during training, the latency benchmark, the ARM check.
A region captioner (AlignCap) loads as a `RegionCaptioner`, a `PytorchCaptioner` that also describes boxes.

    >>> captioner = load_captioner()                      # the shipped model
    >>> captioner.caption(["dog.jpg", "beach.png"])       # decoding as the model's generation config says
    >>> onnx = load_captioner(onnx="onnx/soli-flickr8k-lr64", num_threads=2)
    >>> onnx.caption(["dog.jpg"], num_beams=1)
    >>> regions = load_captioner("runs/aligncap/lstm/model")  # a RegionCaptioner
    >>> regions.caption_regions("dog.jpg", [[[10, 20, 120, 200]]])  # per photo, boxes in its own pixels
    >>> regions.caption_regions("dog.jpg")  # the regions its segmenter proposes

Decoding arguments default to `None`: the model's own generation config (`generation_config.json`, or the ONNX
manifest's `generation`) decides. Loading sets `inference_branches` through `from_pretrained` (or the ONNX folder's
manifest), never on a loaded model.

This module imports neither torch nor transformers: `PytorchCaptioner` imports them when built, so that the
torch-free install (onnxruntime only) loads `OnnxCaptioner` through the same `load_captioner`.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .image_transforms_soli import make_image_list, to_rgb_image, unnormalize_pixels
from .onnx.manifest import decoding_defaults, preprocessing_settings

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

    from .onnx.runtime import SoliOnnxCaptioner

#: The published default model: resolved and cached by huggingface_hub (`HF_HUB_OFFLINE=1` reads the cache).
DEFAULT_MODEL_ID = "soli-hf/soli-flickr8k-lr64"
#: The same model in a source checkout of soli-hf, used before the Hub id when it is there.
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "soli-flickr8k-lr64"
#: The name of the weights file of a saved SOLI folder.
WEIGHTS_NAME = "model.safetensors"
#: The decoding settings a caller may set; `None` keeps the model's own.
DECODING_SETTINGS = ("num_beams", "max_new_tokens", "min_new_tokens")
#: The `model_type` of the region captioners, which load as a `RegionCaptioner`.
REGION_MODEL_TYPES = ("aligncap",)


def default_model() -> str:
    """The model `soli caption` uses without `--model`: the checkout's `models/soli-flickr8k-lr64` when soli-hf runs
    from a source checkout, else `DEFAULT_MODEL_ID`."""
    return str(CHECKOUT_MODEL_DIR) if (CHECKOUT_MODEL_DIR / "config.json").is_file() else DEFAULT_MODEL_ID


class Captioner(ABC):
    """Images in, captions out, for one loaded model.

    `preprocess` turns images into the normalised LR inputs the model takes (`pixel_values`, float32 numpy,
    (B, 3, S, S)); `generate` decodes token ids from them and `decode` turns those into text; `caption` does all
    three. `lr_images` gives the LR inputs back as the images the model saw. Decoding arguments left `None` take
    the model's generation config (`generation_defaults`).

    Attributes:
        name: a short label for reports (the folder's or Hub id's last part).
        preprocessing: the settings that make `pixel_values` (`image_size`, `degradation`, `scale_factor`,
            `blur_sigma`, `image_mean`, `image_std`, `input_range`), as an ONNX manifest stores them.
        generation_defaults: the model's `num_beams` and `max_new_tokens`.
        inference_branches: the inference mode the model runs in ("both": SR and LR branches, or "lr"; "n/a" for a
            region captioner, which has no branches to choose).
        quantization: the int8 quantization record of quantized graphs; None for float32 weights.
        start_tokens: how many tokens the ids of `generate` hold before the new ones: 1 (the decoder's start token)
            for encoder-decoder captioners, 0 for a language model prompted with embeddings (the Q-Former family).
    """

    name: str
    preprocessing: dict[str, Any]
    generation_defaults: dict[str, int]
    inference_branches: str
    quantization: dict[str, Any] | None = None
    start_tokens: int = 1

    @abstractmethod
    def preprocess(self, images: Any) -> np.ndarray:
        """`pixel_values` (B, 3, S, S) float32 for images (paths, PIL images, arrays, or lists of them).

        Raises:
            ImageInputError: an image that cannot be read or used, naming it and why.
        """

    def generate(
        self,
        pixel_values: Any,
        *,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
    ) -> np.ndarray:
        """Token ids (B, length), each row starting with the start token, as `model.generate()` gives them
        (greedy or beam search, never sampling); a setting left None is the model's own."""
        settings = {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}
        return self._generate(pixel_values, {key: value for key, value in settings.items() if value is not None})

    @abstractmethod
    def _generate(self, pixel_values: Any, settings: dict[str, int]) -> np.ndarray:
        """`generate` with the decoding settings that were set (a subset of `DECODING_SETTINGS`)."""

    @abstractmethod
    def decode(self, sequences: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """Captions from token ids, special tokens left out."""

    def decoding(self, **decoding: int | None) -> dict[str, int]:
        """The decoding settings that `generate(..., **decoding)` uses: `generation_defaults` with those set here
        (not None) in their place; a `ValueError` for an unknown setting."""
        return self.generation_defaults | _checked_decoding(decoding)

    def caption_pixels(self, pixel_values: Any, **decoding: int | None) -> list[str]:
        """One caption per row of `pixel_values` (from `preprocess`); a `ValueError` for an unknown decoding
        setting."""
        return self.decode(self.generate(pixel_values, **_checked_decoding(decoding)))

    def caption(self, images: Any, **decoding: int | None) -> list[str]:
        """One caption per image: `preprocess`, `generate`, `decode`."""
        return self.caption_pixels(self.preprocess(images), **decoding)

    def lr_images(self, pixel_values: Any) -> list[Image.Image]:
        """The LR images the model saw: `pixel_values` rows un-normalised to RGB images."""
        mean, std = self.preprocessing["image_mean"], self.preprocessing["image_std"]
        return [unnormalize_pixels(np.asarray(row), mean, std) for row in pixel_values]


def _family_classes(model: str, model_type: str) -> tuple[type[PreTrainedModel], type[ProcessorMixin]]:
    """The model and processor classes of a captioner family, by its `model_type`; a ValueError naming the model
    for any other type."""
    if model_type == "soli":
        from .modeling_soli import SoliForConditionalGeneration
        from .processing_soli import SoliProcessor

        return SoliForConditionalGeneration, SoliProcessor
    if model_type == "dual_qformer":
        from .modeling_dual_qformer import DualQFormerForConditionalGeneration
        from .processing_dual_qformer import DualQFormerProcessor

        return DualQFormerForConditionalGeneration, DualQFormerProcessor
    if model_type == "aligncap":
        from .modeling_aligncap import AlignCapForConditionalGeneration
        from .processing_aligncap import AlignCapProcessor

        return AlignCapForConditionalGeneration, AlignCapProcessor
    raise ValueError(f"{model}: model_type {model_type!r} is not a soli-hf captioner (soli, dual_qformer or aligncap)")


def _checked_decoding(decoding: dict[str, int | None]) -> dict[str, int]:
    """The decoding settings that were set (not None); a `ValueError` (not Python's `TypeError`) for an unknown
    one, for the callers that pass settings through (`caption`, `caption_pixels`, `decoding`)."""
    unknown = sorted(set(decoding) - set(DECODING_SETTINGS))
    if unknown:
        raise ValueError(f"unknown decoding settings {unknown}; these can be set: {list(DECODING_SETTINGS)}")
    return {key: value for key, value in decoding.items() if value is not None}


def _not_found_message(model: str, error: OSError) -> str:
    """One line for a model that is neither a folder nor loadable from the Hub: why, and how to fix it."""
    from huggingface_hub import constants

    # transformers' message spans several lines and points at its docs; its first line says what happened.
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else str(error).strip().splitlines()[0]
    return (
        f"{model}: no such folder, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) nor loadable from "
        f"the Hub ({reason}); download it once with `hf download {model}` (or any soli-hf run while online), or "
        "give a saved SOLI folder (--model DIR)"
    )


class PytorchCaptioner(Captioner):
    """A captioner of the package in PyTorch (SOLI, the dual-encoder Q-Former, or AlignCap as a `RegionCaptioner`):
    its processor and batched `model.generate()`.

    Wraps a model as it is (training mode included: the evaluation during training switches modes itself);
    `from_pretrained` loads one in eval mode.
    """

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, name: str = "soli") -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.preprocessing = preprocessing_settings(processor.image_processor)
        self.generation_defaults = decoding_defaults(model.generation_config)
        # a processor's fixed text prompt (the dual-encoder Q-Former's, e.g. "a photo of") conditions every caption
        prompt = getattr(processor, "prompt", "")
        self._prompt_inputs = {}
        if prompt:
            prompt_ids = processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            self._prompt_inputs = {"prompt_ids": prompt_ids}

    @property
    def inference_branches(self) -> str:
        """SOLI's inference mode (`config.inference_branches`); "lr" for a family that encodes the LR image alone."""
        return getattr(self.model.config, "inference_branches", "lr")

    @property
    def start_tokens(self) -> int:
        """1 for an encoder-decoder model (its ids start with the decoder's start token), else 0."""
        return int(self.model.config.is_encoder_decoder)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike, *, inference_branches: str | None = None, device: str | None = None
    ) -> PytorchCaptioner:
        """Load a saved captioner folder or Hub id of any family of the package (its `model_type`: "soli",
        "dual_qformer", or "aligncap", which gives a `RegionCaptioner`), in eval mode, on `device`;
        `inference_branches` ("both" or "lr", SOLI only) replaces the saved mode.

        Raises:
            ValueError: a folder without config.json, a model type that is not one of the package's captioners
                (or, for `RegionCaptioner.from_pretrained`, not a region captioner), weights that cannot be read
                (truncated or corrupt), a Hub id that is neither cached nor reachable, a branch setting the model
                lacks.
        """
        from safetensors import SafetensorError
        from transformers import AutoConfig

        from .configuration_soli import INFERENCE_BRANCHES

        path = Path(model)
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"{model}: not a saved captioner folder (no config.json)")
        if inference_branches not in (None, *INFERENCE_BRANCHES):
            raise ValueError(f"inference_branches must be one of {INFERENCE_BRANCHES}, got {inference_branches!r}")
        overrides = {} if inference_branches is None else {"inference_branches": inference_branches}
        try:
            model_type = AutoConfig.from_pretrained(model).model_type
            model_class, processor_class = _family_classes(str(model), model_type)
            captioner_class = RegionCaptioner if model_type in REGION_MODEL_TYPES else PytorchCaptioner
            if not issubclass(captioner_class, cls):
                raise ValueError(
                    f"{model} is a {model_type} model, which captions whole photos: not a region captioner"
                )
            if overrides and model_type != "soli":
                raise ValueError(f"{model} is a {model_type} model: inference_branches applies to SOLI only")
            loaded = model_class.from_pretrained(model, **overrides)
        except SafetensorError as error:
            weights = path / WEIGHTS_NAME if path.is_dir() else f"{model} ({WEIGHTS_NAME})"
            raise ValueError(
                f"{weights}: cannot read the weights, the file is truncated or corrupt ({error})"
            ) from error
        except OSError as error:
            if path.exists():
                raise
            raise ValueError(_not_found_message(str(model), error)) from error
        if model_type == "soli" and loaded.config.inference_branches == "both" and not loaded.config.use_sr_branch:
            raise ValueError(f"{model} has no SR branch (the baseline variant): use inference_branches='lr'")
        if device is not None:
            loaded = loaded.to(device)
        return captioner_class(loaded.eval(), processor_class.from_pretrained(model), name=path.name)

    def preprocess(self, images: Any) -> np.ndarray:
        """`SoliImageProcessor(images)["pixel_values"]`."""
        return self.processor.image_processor(images)["pixel_values"]

    def _generate(self, pixel_values: Any, settings: dict[str, int], **model_inputs: Any) -> np.ndarray:
        """`model.generate(pixel_values=...)` (no sampling) on the model's device, with the processor's prompt and
        `model_inputs` (a region captioner's `boxes`)."""
        import torch

        inputs = {"pixel_values": pixel_values, **self._prompt_inputs, **model_inputs}
        inputs = {name: torch.as_tensor(value).to(self.model.device) for name, value in inputs.items()}
        return self.model.generate(**inputs, do_sample=False, **settings).cpu().numpy()

    def decode(self, sequences: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """`processor.batch_decode(sequences, skip_special_tokens=True)`."""
        return self.processor.batch_decode(sequences, skip_special_tokens=True)


@dataclass(frozen=True)
class RegionCaption:
    """A described region of a photo (`RegionCaptioner.caption_regions`).

    Attributes:
        box: (x0, y0, x1, y1) in the photo's own pixels (a file's with its EXIF orientation applied).
        caption: the model's description of the box.
        class_name: for a proposed region, its segment's Pascal VOC class; None for a given box, and for the whole
            photo when the segmenter found no object.
        score: for a proposed region, its segment's mean top-class probability; else None.
    """

    box: tuple[float, float, float, float]
    caption: str
    class_name: str | None = None
    score: float | None = None


class RegionCaptioner(PytorchCaptioner):
    """A region captioner (AlignCap, `model_type="aligncap"`) in PyTorch: describes boxes in photos.

    `caption_regions` describes the boxes given (each photo's `[x0, y0, x1, y1]` in its own pixels) or, without
    boxes, the regions the model's own segmenter proposes: the connected segments of its DeepLabV3 map
    (`object_evidence_aligncap.propose_regions`). As a whole-photo `Captioner` (`caption`, `caption_pixels`,
    `generate`: what `soli caption` without boxes, `soli evaluate` and the others call) it describes each photo's
    full-photo box, (0, 0, side, side) of its `pixel_values`: a phrase for the whole photo, as the model was trained
    to describe a box, not a sentence-length caption.
    """

    def _generate(self, pixel_values: Any, settings: dict[str, int], **model_inputs: Any) -> np.ndarray:
        """`model.generate` on each photo's full-photo box, unless `model_inputs` holds `boxes`."""
        if "boxes" not in model_inputs:
            side = np.shape(pixel_values)[-1]
            model_inputs["boxes"] = [[float(index), 0.0, 0.0, side, side] for index in range(len(pixel_values))]
        return super()._generate(pixel_values, settings, **model_inputs)

    @property
    def inference_branches(self) -> str:
        """Always "n/a": AlignCap has no LR/SR branches to choose (its photo goes to two frozen encoders, whose
        region features the trained part describes), so reports show no inference mode for it."""
        return "n/a"

    def caption_regions(
        self,
        images: Any,
        boxes: Any = None,
        *,
        max_regions: int = 5,
        min_area_fraction: float = 0.02,
        **decoding: int | None,
    ) -> list[list[RegionCaption]]:
        """Describe regions of photos: one list of `RegionCaption` per photo, in box order.

        Args:
            images: one photo or a list (paths, PIL images, arrays, tensors; a file with its EXIF orientation
                applied, so boxes are in the photo as it is shown).
            boxes: per photo, a list of `[x0, y0, x1, y1]` boxes in that photo's own pixels (for one photo, its list
                alone also works). None: each photo's proposed regions, at most `max_regions`, segments covering
                at least `min_area_fraction` of the segmenter's map, largest and most confident first, each box
                widened outward to whole pixels; a photo where no segment is found gets its whole-photo box.
            decoding: `num_beams`, `max_new_tokens`, `min_new_tokens`; None: the model's generation config.

        Raises:
            ValueError: an image that cannot be read (`ImageInputError`), a bad box (the processor's message, naming
                the photo, the box and its values), an unknown decoding setting, or `boxes=None` for a model without
                a segmenter (`use_object_evidence=False`).
        """
        from .processing_aligncap import scaled_boxes

        settings = _checked_decoding(decoding)
        photos = [to_rgb_image(image) for image in make_image_list(images)]
        sizes = [photo.size for photo in photos]
        pixel_values = self.preprocess(photos)
        side = pixel_values.shape[-1]
        if boxes is None:
            regions = self._proposed_regions(pixel_values, sizes, max_regions, min_area_fraction)
            rows = scaled_boxes([[region.box for region in photo] for photo in regions], sizes, side)
        else:
            boxes = _per_photo_boxes(boxes, len(photos))
            rows = scaled_boxes(boxes, sizes, side)  # checks every box first
            regions = [[RegionCaption(tuple(map(float, box)), "") for box in photo_boxes] for photo_boxes in boxes]
        captions = iter(self.decode(self._generate(pixel_values, settings, boxes=rows)))
        return [[RegionCaption(r.box, next(captions), r.class_name, r.score) for r in photo] for photo in regions]

    def _proposed_regions(
        self, pixel_values: np.ndarray, sizes: list[tuple[int, int]], max_regions: int, min_area_fraction: float
    ) -> list[list[RegionCaption]]:
        """Each photo's proposed regions (captions still empty), boxes in its own pixels widened to whole pixels;
        its whole-photo box where none is found."""
        import torch

        from .object_evidence_aligncap import propose_regions

        side = pixel_values.shape[-1]
        pixels = torch.as_tensor(pixel_values).to(self.model.device)
        regions = []
        for probabilities, (width, height) in zip(self.model.segmentation_probabilities(pixels), sizes, strict=True):
            proposals = propose_regions(probabilities, side, max_regions, min_area_fraction)
            scales = (width / side, height / side, width / side, height / side)
            regions.append(
                [
                    RegionCaption(
                        _outward_box(proposal.box, scales, width, height), "", proposal.class_name, proposal.score
                    )
                    for proposal in proposals
                ]
                or [RegionCaption((0.0, 0.0, float(width), float(height)), "")]
            )
        return regions


def _per_photo_boxes(boxes: Any, num_photos: int) -> list[Any]:
    """`boxes` as one list of boxes per photo: a single photo's boxes may come without the per-photo list, as the
    processor takes them. Arrays and tensors become lists."""
    boxes = boxes.tolist() if hasattr(boxes, "tolist") else list(boxes)
    first = boxes[0] if boxes else None
    alone = isinstance(first, (list, tuple)) and first and isinstance(first[0], (int, float))
    return [boxes] if num_photos == 1 and alone else boxes


def _outward_box(
    box: Sequence[float], scales: Sequence[float], width: int, height: int
) -> tuple[float, float, float, float]:
    """A box of `pixel_values` pixels in the photo's pixels (times `scales`), widened outward to whole pixels and
    kept inside the photo (rounded to 1e-6 first, so that float error does not widen it by a pixel)."""
    x0, y0, x1, y1 = (round(value * scale, 6) for value, scale in zip(box, scales, strict=True))
    return (
        float(max(math.floor(x0), 0)),
        float(max(math.floor(y0), 0)),
        float(min(math.ceil(x1), width)),
        float(min(math.ceil(y1), height)),
    )


class OnnxCaptioner(Captioner):
    """An exported SOLI (`soli export`) on onnxruntime: `SoliOnnxCaptioner` behind the `Captioner` interface.

    numpy, pillow and onnxruntime only; the inference mode and decoding defaults are those of the folder's manifest.
    """

    def __init__(self, runtime: SoliOnnxCaptioner, name: str = "soli-onnx") -> None:
        self.runtime = runtime
        self.name = name
        self.preprocessing = dict(runtime.manifest["preprocessing"])
        settings = runtime.generation
        self.generation_defaults = {"num_beams": settings.num_beams, "max_new_tokens": settings.max_new_tokens}

    @classmethod
    def from_pretrained(cls, onnx_dir: str | os.PathLike, *, num_threads: int | None = None) -> OnnxCaptioner:
        """Load an ONNX folder written by `soli export` (`ValueError` naming a missing or damaged file)."""
        from .onnx.runtime import SoliOnnxCaptioner

        return cls(SoliOnnxCaptioner(onnx_dir, num_threads=num_threads), name=Path(onnx_dir).name)

    @property
    def inference_branches(self) -> str:
        """The inference mode the graphs were exported with ("both" or "lr")."""
        return self.runtime.manifest["inference_branches"]

    @property
    def quantization(self) -> dict[str, Any] | None:
        """The manifest's int8 quantization record (None for float32 graphs)."""
        return self.runtime.manifest.get("quantization")

    def preprocess(self, images: Any) -> np.ndarray:
        """`pixel_values`, bit-identical to `SoliImageProcessor`'s."""
        return self.runtime.preprocess(images)

    def _generate(self, pixel_values: Any, settings: dict[str, int]) -> np.ndarray:
        """Greedy or beam search over the exported graphs, as `generate()` does it."""
        return self.runtime.generate(np.asarray(pixel_values, dtype=np.float32), **settings)

    def decode(self, sequences: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """Captions, as `batch_decode(..., skip_special_tokens=True)` gives them."""
        return self.runtime.decode(sequences)


def load_captioner(
    model: str | os.PathLike | None = None,
    *,
    onnx: str | os.PathLike | None = None,
    inference_branches: str | None = None,
    device: str | None = None,
    num_threads: int | None = None,
) -> Captioner:
    """The one way to load a captioner: a saved folder or Hub id of any family (`model`; default:
    `default_model()`), or an exported ONNX folder (`onnx`). A region captioner's folder (AlignCap) gives a
    `RegionCaptioner`, which also describes boxes (`caption_regions`).

    Args:
        model: a saved folder or Hub id (SOLI, dual-encoder Q-Former, AlignCap), for PyTorch.
        onnx: an ONNX folder of `soli export` instead (its inference mode is fixed at export).
        inference_branches: "both" or "lr" instead of the saved mode (PyTorch); for an ONNX folder, the mode it
            must have been exported with.
        device: PyTorch device ("cpu", "cuda", ...).
        num_threads: onnxruntime intra-op threads (ONNX).

    Raises:
        ValueError: both `model` and `onnx`, a setting that does not apply to the backend, or a folder that cannot
            be loaded (naming the file).
    """
    if onnx is None:
        if num_threads is not None:
            raise ValueError("num_threads (onnxruntime's threads) applies to an ONNX folder only")
        return PytorchCaptioner.from_pretrained(
            default_model() if model is None else model, inference_branches=inference_branches, device=device
        )
    if model is not None:
        raise ValueError("give a model or an ONNX folder, not both")
    if device not in (None, "cpu"):
        raise ValueError(f"the ONNX captioner runs on the CPU (onnxruntime), not on {device!r}")
    captioner = OnnxCaptioner.from_pretrained(onnx, num_threads=num_threads)
    if inference_branches is not None and inference_branches != captioner.inference_branches:
        raise ValueError(
            f"{onnx} was exported with inference_branches={captioner.inference_branches!r}, not "
            f"{inference_branches!r}: export it again with --inference-branches {inference_branches}"
        )
    return captioner
