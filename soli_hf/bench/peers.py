"""The captioners a user would pick instead of SOLI, for the latency benchmark: their transformers architectures
at their default (base) sizes, with random weights, built offline (latency does not depend on weight values).

- "vit-gpt2": `VisionEncoderDecoderModel` of `ViTConfig()` + `GPT2Config()`, like nlpconnect/vit-gpt2-image-captioning;
- "blip-base": `BlipForConditionalGeneration(BlipConfig())`, like Salesforce/blip-image-captioning-base;
- "git-base": `GitForCausalLM(GitConfig())`, like microsoft/git-base.

Each takes the photo at its native resolution through its own image processor (the numpy + pillow ones:
resize, centre crop for GIT, rescale and normalize), as its checkpoint's processor does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
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

from .latency import Captioner, Footprint

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


def peer_captioner(
    name: str,
    tokens: int,
    threads: int,
    vision: ConfigOverrides | None = None,
    text: ConfigOverrides | None = None,
) -> tuple[Captioner, Footprint]:
    """A peer in PyTorch eager (image processor + greedy `generate` of exactly `tokens` new tokens) and its
    footprint (fp32 parameters, 4 bytes each)."""
    if name not in PEERS:
        raise ValueError(f"peer must be one of {sorted(PEERS)}, got {name!r}")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    peer = PEERS[name]
    model = peer.model(vision or {}, text or {}).eval()
    processor = peer.image_processor()

    @torch.no_grad()
    def caption(image: Image.Image) -> int:
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        ids = model.generate(
            pixel_values=pixel_values, num_beams=1, do_sample=False, min_new_tokens=tokens, max_new_tokens=tokens
        )
        return ids.shape[1] - 1  # every peer's prompt is its one start token

    parameters = sum(p.numel() for p in model.parameters())
    return caption, Footprint(4 * parameters / 2**20, parameters, "fp32 parameters x 4 bytes")
