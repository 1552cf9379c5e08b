"""Self-critical sequence training (Rennie et al. 2017) with the CIDEr-D reward (DESIGN.md 7).

For each image, K captions are sampled from the model; each one's reward is its CIDEr-D against the image's
references (document frequencies cached from the training references; `<eos>` counts as a word, so ending
well is rewarded), minus a baseline: the reward of the greedy caption, or the mean reward of the image's other
K - 1 samples. The loss is REINFORCE: -(reward - baseline) * log p(caption), averaged over tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ..metrics import CiderD
from ..modeling_soli import SoliEncoderOutput, SoliForConditionalGeneration


def reference_token_ids(references: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[tuple[int, ...]]:
    """References as the model's token ids, `<bos>` dropped and `<eos>` kept (the words of the reward)."""
    return [tuple(ids[1:]) for ids in tokenizer(list(references), truncation=False)["input_ids"]]


def build_reward_scorer(all_references: Sequence[Sequence[str]], tokenizer: PreTrainedTokenizerBase) -> CiderD:
    """A CIDEr-D scorer over token ids whose document frequencies are those of the training references."""
    return CiderD([reference_token_ids(refs, tokenizer) for refs in all_references])


def caption_words(token_ids: torch.Tensor, eos_token_id: int, pad_token_id: int) -> list[tuple[int, ...]]:
    """Generated rows as reward words: everything up to and including the first `<eos>`, padding dropped."""
    words = []
    for row in token_ids.tolist():
        if eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        words.append(tuple(token for token in row if token != pad_token_id))
    return words


@dataclass
class SampledCaptions:
    """Captions decoded step by step, with the log-probability of each chosen token (no `<bos>`)."""

    token_ids: torch.LongTensor  # (N, T), padding after <eos>
    log_probs: torch.Tensor  # (N, T), 0 at padding
    mask: torch.Tensor  # (N, T), 1 up to and including <eos>


def decode(
    model: SoliForConditionalGeneration,
    encoder_outputs: SoliEncoderOutput,
    num_per_image: int,
    max_new_tokens: int,
    sample: bool,
) -> SampledCaptions:
    """Sample (`sample=True`) or greedily decode `num_per_image` captions per image, keeping the graph of the
    chosen tokens' log-probabilities (run it under `torch.no_grad()` when they are not needed). The model's
    `generation_config.suppress_tokens` are never chosen: their log-probabilities are -inf, as in `generate()`."""
    config = model.config
    memory = encoder_outputs.last_hidden_state.repeat_interleave(num_per_image, dim=0)
    keys = encoder_outputs.attention_keys.repeat_interleave(num_per_image, dim=0)
    decoder = model.decoder
    state = decoder.initial_state(memory)
    tokens = torch.full((memory.shape[0], 1), config.decoder_start_token_id, device=memory.device)
    finished = torch.zeros(memory.shape[0], dtype=torch.bool, device=memory.device)
    # The tokens `generate()` never picks (`<unk>`: suppress_unknown_token) are never sampled nor chosen here either:
    # a caption with `<unk>` could earn a reward and be reinforced, and inference would drop the word anyway.
    suppressed = torch.tensor(model.generation_config.suppress_tokens or [], dtype=torch.long, device=memory.device)
    chosen, chosen_log_probs, alive = [], [], []
    for _ in range(max_new_tokens):
        logits, state, _ = decoder(tokens, memory, keys, state)
        log_probs = logits[:, -1].float().index_fill(1, suppressed, -torch.inf).log_softmax(dim=-1)
        if sample:
            tokens = torch.multinomial(log_probs.exp(), 1)
        else:
            tokens = log_probs.argmax(dim=-1, keepdim=True)
        tokens = tokens.masked_fill(finished.unsqueeze(1), config.pad_token_id)
        alive.append(~finished)
        chosen.append(tokens)
        chosen_log_probs.append(log_probs.gather(1, tokens).squeeze(1))
        finished = finished | (tokens.squeeze(1) == config.eos_token_id)
        if finished.all():
            break
    mask = torch.stack(alive, dim=1).float()
    return SampledCaptions(torch.cat(chosen, dim=1), torch.stack(chosen_log_probs, dim=1) * mask, mask)


def self_critical_advantages(rewards: np.ndarray, num_per_image: int, greedy_rewards: np.ndarray | None) -> np.ndarray:
    """Reward minus baseline. `rewards`: (images * K,) grouped by image; `greedy_rewards`: (images,) for the
    greedy baseline, or None for the mean of each sample's K - 1 siblings."""
    grouped = rewards.reshape(-1, num_per_image)
    if greedy_rewards is not None:
        baseline = greedy_rewards[:, None]
    else:
        baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / (num_per_image - 1)
    return (grouped - baseline).reshape(-1)


def scst_loss(
    model: SoliForConditionalGeneration,
    encoder_outputs: SoliEncoderOutput,
    references: Sequence[Sequence[str]],
    tokenizer: PreTrainedTokenizerBase,
    scorer: CiderD,
    num_samples: int,
    baseline: str,
    max_new_tokens: int,
) -> tuple[torch.Tensor, float]:
    """The SCST loss of one batch and the mean CIDEr-D reward of its samples."""
    config = model.config
    samples = decode(model, encoder_outputs, num_samples, max_new_tokens, sample=True)
    reference_ids = [reference_token_ids(refs, tokenizer) for refs in references]
    sample_words = caption_words(samples.token_ids, config.eos_token_id, config.pad_token_id)
    rewards = scorer.score_batch(sample_words, [refs for refs in reference_ids for _ in range(num_samples)])
    greedy_rewards = None
    if baseline == "greedy":
        with torch.no_grad():
            greedy = decode(model, encoder_outputs, 1, max_new_tokens, sample=False)
        greedy_words = caption_words(greedy.token_ids, config.eos_token_id, config.pad_token_id)
        greedy_rewards = scorer.score_batch(greedy_words, reference_ids)
    advantages = torch.as_tensor(
        self_critical_advantages(rewards, num_samples, greedy_rewards),
        dtype=samples.log_probs.dtype,
        device=samples.log_probs.device,
    )
    loss = -(samples.log_probs * advantages.unsqueeze(1)).sum() / samples.mask.sum()
    return loss, float(rewards.mean())


def training_rewards(
    model: SoliForConditionalGeneration,
    processor: Any,
    rows: Any,
    scorer: CiderD,
    num_samples: int = 5,
    max_new_tokens: int = 20,
    batch_size: int = 50,
) -> dict[str, float]:
    """What SCST's reward sees on `rows` (a caption dataset split): the mean CIDEr-D reward of the greedy caption
    and of `num_samples` sampled captions per photo, and the greedy captions' mean length in reward words. A greedy
    reward far above the samples' on training photos means the model already says what it was taught of them.
    The photos go in as they are (no random degradation), branch B on the SR output (curriculum alpha 1)."""
    config = model.config
    greedy_rewards, sample_rewards, lengths = [], [], []
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = rows.select(range(start, min(start + batch_size, len(rows))))
        pixels = processor(images=[image.convert("RGB") for image in batch["image"]], return_tensors="pt")
        references = [reference_token_ids(refs, processor.tokenizer) for refs in batch["captions"]]
        with torch.no_grad():
            encoded = model.get_encoder()(pixels["pixel_values"], curriculum_alpha=1.0)
            greedy = decode(model, encoded, 1, max_new_tokens, sample=False)
            samples = decode(model, encoded, num_samples, max_new_tokens, sample=True)
        greedy_words = caption_words(greedy.token_ids, config.eos_token_id, config.pad_token_id)
        sample_words = caption_words(samples.token_ids, config.eos_token_id, config.pad_token_id)
        greedy_rewards.extend(scorer.score_batch(greedy_words, references))
        sample_rewards.extend(scorer.score_batch(sample_words, [r for r in references for _ in range(num_samples)]))
        lengths.extend(len(words) for words in greedy_words)
    return {
        "images": len(rows),
        "greedy_reward": float(np.mean(greedy_rewards)),
        "sample_reward": float(np.mean(sample_rewards)),
        "greedy_length": float(np.mean(lengths)),
    }
