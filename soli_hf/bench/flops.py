"""Model size and compute: parameter counts and FLOPs measured with `torch.utils.flop_counter`."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..configuration_soli import INFERENCE_BRANCHES, SoliConfig
from ..modeling_soli import SoliForConditionalGeneration

DEFAULT_CAPTION_TOKENS = 12  # about one Flickr8k caption (10.8 words) plus <eos>


def built_for(model: SoliForConditionalGeneration, branches: str) -> SoliForConditionalGeneration:
    """`model` as built for inference with `branches` ("both" or "lr"): a second instance, in eval mode, from a copy
    of its config with that `inference_branches`, holding the same weight tensors (no copy; `model` and its config
    are left as they are)."""
    if branches not in INFERENCE_BRANCHES:
        raise ValueError(f"branches must be one of {INFERENCE_BRANCHES}, got {branches!r}")
    config = copy.deepcopy(model.config)
    config.inference_branches = branches
    with torch.device("meta"):  # no memory and no initialisation: the weights come from `model`
        twin = type(model)(config)
    twin.load_state_dict(model.state_dict(), assign=True)
    return twin.eval()


def _measured_flops(function: Any, *args: Any) -> tuple[int, Any]:
    with FlopCounterMode(display=False) as counter:
        result = function(*args)
    return counter.get_total_flops(), result


@torch.no_grad()
def count_flops(
    model: SoliForConditionalGeneration, branches: str, caption_tokens: int = DEFAULT_CAPTION_TOKENS
) -> dict[str, int]:
    """FLOPs to caption one image with `branches` (measured on `built_for(model, branches)`): the encoder once,
    then one decoder step per generated token."""
    model = built_for(model, branches)
    size = model.config.image_size
    pixel_values = torch.zeros(1, 3, size, size, device=model.device, dtype=model.dtype)
    encoder_flops, encoded = _measured_flops(model.encoder, pixel_values)
    memory, keys = encoded.last_hidden_state, encoded.attention_keys
    start = torch.full((1, 1), model.config.decoder_start_token_id, device=model.device)
    state_flops, state = _measured_flops(model.decoder.initial_state, memory)
    step_flops, _ = _measured_flops(model.decoder, start, memory, keys, state)
    return {
        "encoder": encoder_flops,
        "decoder_per_token": step_flops,
        "caption_tokens": caption_tokens,
        "total": encoder_flops + state_flops + caption_tokens * step_flops,
    }


def branch_inputs(config: SoliConfig) -> dict[str, dict[str, Any]]:
    """What each branch of the model encodes: {"lr": ..., "b": ... (with branch B)}, each {"input", "size"}; the
    LR branch's input is "lr" (the LR image) or "bicubic" (`lr_branch_upsample` > 1), branch B's is
    `config.branch_b_input`."""
    lr_side, sr_side = config.image_size * config.lr_branch_upsample, config.image_size * config.sr_scale
    branches = {"lr": {"input": "lr" if config.lr_branch_upsample == 1 else "bicubic", "size": [3, lr_side, lr_side]}}
    if config.use_sr_branch:
        branches["b"] = {"input": config.branch_b_input, "size": [3, sr_side, sr_side]}
    return branches


def model_summary(model: SoliForConditionalGeneration) -> dict[str, Any]:
    """Parameters, vocabulary, input size, what each branch encodes and FLOPs per image for each inference mode
    (a model without the SR module, e.g. `branch_b_input="bicubic"`, has no `super_resolution` parameters)."""
    parts = {
        "total": model,
        "super_resolution": model.encoder.super_resolution,
        "backbone": model.encoder.backbone,
        "decoder": model.decoder,
        "contrastive_head (training only)": model.contrastive_head,
    }
    parameters = {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items() if part is not None}
    modes = INFERENCE_BRANCHES if model.config.use_sr_branch else ("lr",)
    lr_side = model.config.image_size
    sr_side = lr_side * model.config.sr_scale
    return {
        "parameters": parameters,
        "vocab_size": model.config.vocab_size,
        "input_size": [3, lr_side, lr_side],
        "sr_size": [3, sr_side, sr_side],
        "branch_inputs": branch_inputs(model.config),
        "default_inference_branches": model.config.inference_branches,
        "flops_per_image": {branches: count_flops(model, branches) for branches in modes},
    }
