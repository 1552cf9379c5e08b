"""The `region-to-text` pipeline of the AlignCap region captioner: a photo and boxes in, one phrase per box out.

Why a task of its own rather than `image-text-to-text` with a `boxes` keyword: that task's contract is a photo and a
text prompt in, one text out, and its built-in pipeline (and SOLI's and the dual-encoder family's subclasses of it,
which serve `image-to-text` too) batch, chat-template and post-process by that contract. A region captioner takes a
photo and a list of boxes and returns one phrase per box: another input and another output shape. So `import
soli_hf` registers `region-to-text` with transformers' `PIPELINE_REGISTRY` (AutoModelForImageTextToText, the
AlignCap processor), and a saved AlignCap folder names this file under `custom_pipelines`, so that
`pipeline("region-to-text", model=folder, trust_remote_code=True)` works where soli_hf is not installed.
"""

from __future__ import annotations

from typing import Any

from transformers.image_utils import load_image
from transformers.pipelines.base import Pipeline

_URL_PREFIXES = ("http://", "https://")
TASK = "region-to-text"


class AlignCapRegionToTextPipeline(Pipeline):
    """Describe boxes in photos: `pipe(image, boxes=[[x0, y0, x1, y1], ...])` ->
    `[{"box": [x0, y0, x1, y1], "generated_text": "a brown dog"}, ...]`, one entry per box (per box and returned
    sequence with `num_return_sequences=n`), boxes in the given photo's pixels.

    For a list of photos, `boxes` holds one list of boxes per photo, and the result one list per photo. Photos are
    what [`AlignCapProcessor`] accepts, plus URLs; `generate_kwargs` (e.g. `{"num_beams": 3}`) and
    `max_new_tokens` go to `model.generate`. Bad boxes raise the processor's `ValueError`, naming photo and box.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True

    def __call__(self, images: Any, boxes: Any = None, **kwargs: Any) -> Any:
        if boxes is None:
            raise ValueError("region-to-text describes boxes: pass boxes=[[x0, y0, x1, y1], ...] (per photo)")
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images: got an empty list; pass one photo or a list of photos")
            if len(boxes) != len(images):
                raise ValueError(f"got {len(images)} images but boxes for {len(boxes)}: give one list per image")
            inputs = [{"image": image, "boxes": box_list} for image, box_list in zip(images, boxes, strict=True)]
            return super().__call__(inputs, **kwargs)
        return super().__call__({"image": images, "boxes": boxes}, **kwargs)

    def _sanitize_parameters(
        self,
        generate_kwargs: dict | None = None,
        max_new_tokens: int | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise ValueError(f"region-to-text got unexpected arguments: {sorted(kwargs)}")
        generate_kwargs = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            generate_kwargs["max_new_tokens"] = max_new_tokens
        return {"timeout": timeout}, {"generate_kwargs": generate_kwargs}, {}

    def preprocess(self, inputs: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        image = inputs["image"]
        if isinstance(image, str) and image.startswith(_URL_PREFIXES):
            image = load_image(image, timeout=timeout)
        boxes = _as_box_list(inputs["boxes"])
        model_inputs = dict(self.processor(images=image, boxes=[boxes], return_tensors="pt"))
        model_inputs["given_boxes"] = [[float(value) for value in box] for box in boxes]
        return model_inputs

    def _forward(self, model_inputs: dict[str, Any], generate_kwargs: dict | None = None) -> dict[str, Any]:
        given_boxes = model_inputs.pop("given_boxes")
        generate_kwargs = dict(generate_kwargs or {})
        if hasattr(self, "_prepare_generate_kwargs"):  # transformers >= 5
            generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=False)
        else:  # transformers 4.x
            generate_kwargs.setdefault("generation_config", self.model.generation_config)
        sequences = self.model.generate(
            pixel_values=model_inputs["pixel_values"], boxes=model_inputs["boxes"], **generate_kwargs
        )
        return {"sequences": sequences, "given_boxes": given_boxes}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        boxes, sequences = model_outputs["given_boxes"], model_outputs["sequences"]
        phrases = self.processor.batch_decode(sequences, skip_special_tokens=True)
        per_box = len(phrases) // len(boxes)
        return [{"box": boxes[index // per_box], "generated_text": phrase} for index, phrase in enumerate(phrases)]


def _as_box_list(boxes: Any) -> list[Any]:
    """One photo's boxes as a list of boxes (a single box given alone, as four numbers, becomes a list of one)."""
    boxes = boxes.tolist() if hasattr(boxes, "tolist") else list(boxes)
    return [boxes] if len(boxes) == 4 and all(isinstance(value, (int, float)) for value in boxes) else boxes
