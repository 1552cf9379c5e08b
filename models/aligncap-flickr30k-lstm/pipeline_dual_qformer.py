"""The `image-to-text` / `image-text-to-text` pipeline for the dual-encoder Q-Former captioner.

SOLI's pipeline captions images with no prompt; this subclass serves the dual-encoder Q-Former captioner through
the same path and behaves exactly like SOLI's (and so the built-in pipeline) for every other model. It is
registered by `import soli_hf`, and saved beside dual-encoder Q-Former checkpoints for `trust_remote_code=True`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.image_utils import load_image

from .pipeline_soli import SoliImageTextToTextPipeline

_URL_PREFIXES = ("http://", "https://")


class DualQFormerImageTextToTextPipeline(SoliImageTextToTextPipeline):
    """Caption images with the dual-encoder Q-Former captioner: `pipe(image)` -> `[{"generated_text": ...}]`.

    Inputs, `generate_kwargs`, `max_new_tokens` and `num_return_sequences` work as for SOLI. An optional `text`
    becomes the start of the caption: it follows the processor's prompt in the language model's input, and the
    returned caption is the text and its continuation.
    """

    def _is_dual_qformer(self) -> bool:
        return getattr(self.model.config, "model_type", None) == "dual_qformer"

    def _is_soli(self) -> bool:
        """SOLI's prompt-free captioning path (`__call__`, `postprocess`) serves this family too."""
        return super()._is_soli() or self._is_dual_qformer()

    def preprocess(self, inputs: Any = None, timeout: float | None = None, **processing_kwargs: Any) -> Any:
        if not self._is_dual_qformer():
            return super().preprocess(inputs, timeout=timeout, **processing_kwargs)
        image, text = (inputs["images"], inputs.get("text")) if isinstance(inputs, dict) else (inputs, None)
        if isinstance(image, str) and image.startswith(_URL_PREFIXES):
            image = load_image(image, timeout=timeout)
        model_inputs = dict(self.processor(images=image, return_tensors="pt"))
        start = torch.zeros(1, 0, dtype=torch.long)
        if text:
            lead = " " if self.processor.prompt else ""
            start = torch.tensor([self.processor.tokenizer(lead + text, add_special_tokens=False)["input_ids"]])
            prompt = model_inputs.get("prompt_ids", torch.zeros(1, 0, dtype=torch.long))
            model_inputs["prompt_ids"] = torch.cat([prompt, start], dim=1)
        model_inputs["caption_start_ids"] = start
        return model_inputs

    def _forward(self, model_inputs: Any, generate_kwargs: dict | None = None) -> Any:
        if not self._is_dual_qformer():
            return super()._forward(model_inputs, generate_kwargs=generate_kwargs)
        start = model_inputs.pop("caption_start_ids")
        sequences = super()._forward(model_inputs, generate_kwargs=generate_kwargs)["sequences"]
        start = start.to(sequences.device).unsqueeze(1).expand(-1, sequences.shape[1], -1)
        return {"sequences": torch.cat([start, sequences], dim=-1)}
