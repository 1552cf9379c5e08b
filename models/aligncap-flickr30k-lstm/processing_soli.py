"""SoliProcessor: the image processor and the caption tokenizer behind one call."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import transformers
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .losses_soli import IGNORE_INDEX


class SoliProcessor(ProcessorMixin):
    r"""
    Wraps a [`SoliImageProcessor`] and the word-level caption tokenizer.

    `processor(images=..., text=...)` returns `pixel_values` (and `hr_pixel_values` with `return_hr=True`) for
    the images, and `input_ids`, `attention_mask` and `labels` (padding set to -100) for the captions, ready for
    `SoliForConditionalGeneration(**inputs)`.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """`ProcessorMixin.save_pretrained`, naming the tokenizer class that transformers 4.x and 5.x both know."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        tokenizer_config = Path(save_directory) / "tokenizer_config.json"
        if tokenizer_config.exists():
            values = json.loads(tokenizer_config.read_text(encoding="utf-8"))
            values["tokenizer_class"] = "PreTrainedTokenizerFast"
            tokenizer_config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return result

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        return_hr: bool = False,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **image_kwargs: Any,
    ) -> BatchFeature:
        """Process images (see `SoliImageProcessor.preprocess`) and/or captions (tokenised with `<bos>`/`<eos>`)."""
        if images is None and text is None:
            raise ValueError("SoliProcessor needs `images`, `text` or both")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, return_hr=return_hr, **image_kwargs))
        if text is not None:
            encoding = self.tokenizer(text, padding=padding, truncation=truncation, max_length=max_length)
            data["input_ids"] = encoding["input_ids"]
            data["attention_mask"] = encoding["attention_mask"]
            data["labels"] = _mask_padding(encoding["input_ids"], encoding["attention_mask"])
        if images is not None and text is not None:
            n_images, n_texts = len(data["pixel_values"]), len(data["input_ids"]) if isinstance(text, list) else 1
            if n_images != n_texts:
                raise ValueError(f"SoliProcessor got {n_images} images but {n_texts} captions")
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """Decode a batch of token ids with the tokenizer (`skip_special_tokens=True` gives plain captions)."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """Decode one sequence of token ids with the tokenizer."""
        return self.tokenizer.decode(*args, **kwargs)

    def post_process_image_text_to_text(
        self, generated_outputs: Any, skip_special_tokens: bool = True, **kwargs: Any
    ) -> list[str]:
        """Captions from `generate()` output, as the image-text-to-text pipeline expects."""
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]


if int(transformers.__version__.split(".")[0]) < 5:
    # transformers 4.x finds the sub-processors through these names (5.x reads them from __init__).
    SoliProcessor.image_processor_class = "AutoImageProcessor"
    SoliProcessor.tokenizer_class = "AutoTokenizer"


def _mask_padding(input_ids: list[Any], attention_mask: list[Any]) -> list[Any]:
    """Labels: the token ids with padded positions set to -100 (ignored by the loss)."""
    if input_ids and isinstance(input_ids[0], int):
        return [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, attention_mask, strict=True)]
    return [_mask_padding(ids, mask) for ids, mask in zip(input_ids, attention_mask, strict=True)]
