"""The `image-to-text` / `image-text-to-text` pipeline for SOLI.

transformers 5 redirects the removed `image-to-text` task to `image-text-to-text`, whose built-in pipeline
requires a text prompt. This subclass captions images with no prompt (an optional `text` becomes the start of
the caption) when the model is SOLI, and behaves exactly like the built-in pipeline for any other model.
It is registered by `import soli_hf`, and saved beside SOLI checkpoints for `trust_remote_code=True` users.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.image_utils import load_image
from transformers.pipelines.base import Pipeline
from transformers.pipelines.image_text_to_text import ImageTextToTextPipeline

_URL_PREFIXES = ("http://", "https://")


class SoliImageTextToTextPipeline(ImageTextToTextPipeline):
    """Caption images with SOLI: `pipe(image)` -> `[{"generated_text": "a dog runs on the grass"}]`.

    Accepts what `SoliImageProcessor` accepts (paths, PIL images, arrays, tensors) plus URLs, one image or a
    list, read by its rules (files with their EXIF orientation applied, pixel ranges by dtype); `generate_kwargs`
    (e.g. `{"num_beams": 3}`) and `max_new_tokens` go to `model.generate`. With `num_return_sequences=n` each
    image gets n captions. A bad image raises a `ValueError` naming it.
    """

    def _is_soli(self) -> bool:
        return getattr(self.model.config, "model_type", None) == "soli"

    def __call__(self, images: Any = None, text: str | list[str] | None = None, **kwargs: Any) -> Any:
        if not self._is_soli():
            return super().__call__(images, text=text, **kwargs)
        if images is None:
            raise ValueError("SOLI captions images: pass one image or a list of images")
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError("images: got an empty list; pass one image or a list of images")
        if text is None:
            return Pipeline.__call__(self, images, **kwargs)
        if isinstance(images, (list, tuple)):
            prompts = text if isinstance(text, (list, tuple)) else [text] * len(images)
            if len(prompts) != len(images):
                raise ValueError(f"got {len(images)} images but {len(prompts)} text prompts")
            return Pipeline.__call__(
                self, [{"images": i, "text": t} for i, t in zip(images, prompts, strict=True)], **kwargs
            )
        return Pipeline.__call__(self, {"images": images, "text": text}, **kwargs)

    def preprocess(self, inputs: Any = None, timeout: float | None = None, **processing_kwargs: Any) -> Any:
        if not self._is_soli():
            return super().preprocess(inputs, timeout=timeout, **processing_kwargs)
        image, prompt = (inputs["images"], inputs.get("text")) if isinstance(inputs, dict) else (inputs, None)
        if isinstance(image, str) and image.startswith(_URL_PREFIXES):
            image = load_image(image, timeout=timeout)
        model_inputs = {"pixel_values": self.processor(images=image, return_tensors="pt")["pixel_values"]}
        if prompt:
            tokenizer = self.processor.tokenizer
            prompt_ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            model_inputs["decoder_input_ids"] = torch.tensor([prompt_ids])
        return model_inputs

    def _forward(self, model_inputs: Any, generate_kwargs: dict | None = None) -> Any:
        if not self._is_soli():
            return super()._forward(model_inputs, generate_kwargs=generate_kwargs)
        generate_kwargs = dict(generate_kwargs or {})
        if hasattr(self, "_prepare_generate_kwargs"):  # transformers >= 5
            generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=False)
        else:  # transformers 4.x
            generate_kwargs.setdefault("generation_config", self.model.generation_config)
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        num_images = model_inputs["pixel_values"].shape[0]
        return {"sequences": sequences.reshape(num_images, -1, sequences.shape[-1])}

    def postprocess(self, model_outputs: Any, **postprocess_kwargs: Any) -> Any:
        if not self._is_soli():
            return super().postprocess(model_outputs, **postprocess_kwargs)
        sequences = model_outputs["sequences"]
        captions = self.processor.batch_decode(sequences.reshape(-1, sequences.shape[-1]), skip_special_tokens=True)
        return [{"generated_text": caption} for caption in captions]
