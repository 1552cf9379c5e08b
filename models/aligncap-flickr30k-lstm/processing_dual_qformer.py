"""DualQFormerProcessor: SOLI's low-resolution image path and the frozen language model's tokenizer behind one call."""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature, PretrainedConfig

from .image_processing_soli import SoliImageProcessor
from .losses_soli import IGNORE_INDEX
from .processing_soli import SoliProcessor

DEFAULT_MAX_LENGTH = 40  # caption tokens, end-of-sequence included: Flickr8k's longest captions fit


class DualQFormerProcessor(SoliProcessor):
    r"""
    Wraps a [`SoliImageProcessor`] (any photo -> the 64x64 LR `pixel_values`; each encoder's upsampling happens in
    the model) and the language model's tokenizer.

    `processor(images=..., text=...)` returns `pixel_values`, and for the captions `input_ids` (the caption's tokens
    and the end-of-sequence token, no start token: the soft prompt comes first), `attention_mask` and `labels`
    (padding set to -100); with a `prompt`, also `prompt_ids` (one row, shared by the batch), which `forward` and
    `generate` put between the soft prompt and the caption.

    Args:
        image_processor (`SoliImageProcessor`): SOLI's image processor (its `image_size` is the model's).
        tokenizer: the language model's tokenizer.
        prompt (`str`, *optional*, defaults to `""`):
            A fixed text after the soft prompt, e.g. `"a photo of"`, at training and generation; never part of the
            decoded caption.
        max_length (`int`, *optional*, defaults to 40):
            Captions are truncated to this many tokens, end-of-sequence included.
    """

    attributes = ["image_processor", "tokenizer"]

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        prompt: str = "",
        max_length: int = DEFAULT_MAX_LENGTH,
        **kwargs: Any,
    ) -> None:
        self.prompt = prompt
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def for_model(cls, config: PretrainedConfig, tokenizer: Any, prompt: str = "") -> DualQFormerProcessor:
        """The processor of a [`DualQFormerConfig`] model: its LR image size, its Q-Formers' caption length."""
        return cls(
            SoliImageProcessor(image_size=config.image_size),
            tokenizer,
            prompt=prompt,
            max_length=min(DEFAULT_MAX_LENGTH, config.max_text_length - 1),
        )

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        prompt: str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        **image_kwargs: Any,
    ) -> BatchFeature:
        """Process images (see `SoliImageProcessor.preprocess`) and/or captions; `prompt` overrides the processor's.

        Captions may outnumber images by a whole factor (k captions per image, in consecutive rows)."""
        if images is None and text is None:
            raise ValueError("DualQFormerProcessor needs `images`, `text` or both")
        prompt = self.prompt if prompt is None else prompt
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images, **image_kwargs))
        if text is not None:
            data.update(self._captions([text] if isinstance(text, str) else list(text), prompt, max_length))
            num_images, num_captions = len(data.get("pixel_values", [])), len(data["input_ids"])
            if images is not None and num_captions % num_images:
                raise ValueError(
                    f"DualQFormerProcessor got {num_images} images and {num_captions} captions: the number of "
                    "captions must be a multiple of the number of images"
                )
        if prompt:
            data["prompt_ids"] = [self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _captions(self, captions: list[str], prompt: str, max_length: int | None) -> dict[str, list[list[int]]]:
        """Right-padded caption tokens + end-of-sequence, their mask and their labels (-100 on padding)."""
        limit = (max_length or self.max_length) - 1
        lead = " " if prompt else ""  # after a prompt, the caption's first word is a new word
        encoded = self.tokenizer([lead + caption.strip() for caption in captions], add_special_tokens=False)
        rows = [ids[:limit] + [self.tokenizer.eos_token_id] for ids in encoded["input_ids"]]
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return {
            "input_ids": [row + [pad] * (width - len(row)) for row in rows],
            "attention_mask": [[1] * len(row) + [0] * (width - len(row)) for row in rows],
            "labels": [row + [IGNORE_INDEX] * (width - len(row)) for row in rows],
        }

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """Decode a batch of generated token ids into captions (`skip_special_tokens=True` drops the end token)."""
        return [caption.strip() for caption in self.tokenizer.batch_decode(*args, **kwargs)]

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "prompt_ids"]
