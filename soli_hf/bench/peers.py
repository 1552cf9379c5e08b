"""The captioners a user would pick instead of SOLI, for the latency benchmark: their transformers architectures
at their default (base) sizes, with random weights, built offline (latency does not depend on weight values).

- "vit-gpt2": `VisionEncoderDecoderModel` of `ViTConfig()` + `GPT2Config()`, like nlpconnect/vit-gpt2-image-captioning;
- "blip-base": `BlipForConditionalGeneration(BlipConfig())`, like Salesforce/blip-image-captioning-base;
- "git-base": `GitForCausalLM(GitConfig())`, like microsoft/git-base.

Each is a `soli_hf.captioner.Captioner` (`PeerCaptioner`), so that the latency benchmark times it as it times
SOLI: it takes the photo at its native resolution through its own image processor (the numpy + pillow ones:
resize, centre crop for GIT, rescale and normalize), as its checkpoint's processor does, then greedy `generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    GitConfig,
    GitForCausalLM,
    GPT2Config,
    PreTrainedModel,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessorPil,
)

from ..captioner import Captioner

#: Overrides of a peer's vision and text configs (empty: the base sizes; tests pass tiny ones).
ConfigOverrides = dict[str, Any]


@dataclass(frozen=True)
class Peer:
    """A peer architecture: the checkpoint it stands for, its random-weight model and its image processor."""

    name: str
    like: str
    model: Callable[[ConfigOverrides, ConfigOverrides], PreTrainedModel]
    image_processor: Callable[[], Any]


def _vit_gpt2(vision: ConfigOverrides, text: ConfigOverrides) -> PreTrainedModel:
    # from_encoder_decoder_configs sets the decoder's is_decoder and add_cross_attention.
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(**vision), GPT2Config(**text))
    config.decoder_start_token_id = config.decoder.bos_token_id
    config.pad_token_id = config.decoder.eos_token_id
    return VisionEncoderDecoderModel(config)


def _blip(vision: ConfigOverrides, text: ConfigOverrides) -> PreTrainedModel:
    return BlipForConditionalGeneration(BlipConfig(vision_config=vision, text_config=text))


def _git(vision: ConfigOverrides, text: ConfigOverrides) -> PreTrainedModel:
    return GitForCausalLM(GitConfig(vision_config=vision, **text))


PEERS = {
    peer.name: peer
    for peer in (
        Peer("vit-gpt2", "nlpconnect/vit-gpt2-image-captioning", _vit_gpt2, ViTImageProcessorPil),
        Peer("blip-base", "Salesforce/blip-image-captioning-base", _blip, BlipImageProcessorPil),
        Peer("git-base", "microsoft/git-base", _git, CLIPImageProcessorPil),
    )
}


class PeerCaptioner(Captioner):
    """A peer in PyTorch eager with random weights (seeded): its own image processor, then `model.generate()`
    (greedy or beam search, no sampling). Every peer's prompt is its one start token, as SOLI's is.

    Args:
        name: a key of `PEERS`.
        vision, text: overrides of the vision and text configs (default: the base sizes).
    """

    def __init__(self, name: str, vision: ConfigOverrides | None = None, text: ConfigOverrides | None = None) -> None:
        if name not in PEERS:
            raise ValueError(f"peer must be one of {sorted(PEERS)}, got {name!r}")
        self.peer = PEERS[name]
        self.name = name
        torch.manual_seed(0)
        self.model = self.peer.model(vision or {}, text or {}).eval()
        self.image_processor = self.peer.image_processor()
        # What lr_images needs to turn pixel_values back into images; the side is the processor's output size.
        crop = self.image_processor.crop_size if getattr(self.image_processor, "do_center_crop", False) else None
        self.preprocessing = {
            "image_size": (crop or self.image_processor.size).height,
            "image_mean": list(self.image_processor.image_mean),
            "image_std": list(self.image_processor.image_std),
        }
        # A random-weight peer has no saved generation settings, so generate() falls back on transformers' defaults:
        # greedy, max_length 20 with the one start token counted.
        self.generation_defaults = {"num_beams": 1, "max_new_tokens": 19}

    def preprocess(self, images: Any) -> np.ndarray:
        """The peer's own image processor: `pixel_values` at its native input size."""
        return self.image_processor(images=images, return_tensors="np")["pixel_values"]

    def _generate(self, pixel_values: Any, settings: dict[str, int]) -> np.ndarray:
        """`model.generate(pixel_values=...)`, no sampling: ids (B, 1 + new tokens)."""
        return self.model.generate(pixel_values=torch.as_tensor(pixel_values), do_sample=False, **settings).numpy()

    def decode(self, sequences: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        """The token ids as text ("12 7 431"): random weights come without a tokenizer, so there are no words."""
        return [" ".join(str(int(token)) for token in row) for row in sequences]
