"""The training losses of SOLI: caption cross-entropy, branch-contrastive InfoNCE, SR reconstruction, and the two
optional ones: high-resolution teacher distillation and semantic tags."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def caption_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, pad_token_id: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Next-token cross-entropy: `logits[:, t]` predicts `labels[:, t + 1]`; padding and -100 are ignored."""
    targets = labels[:, 1:].masked_fill(labels[:, 1:] == pad_token_id, IGNORE_INDEX)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def symmetric_info_nce(embeds_a: torch.Tensor, embeds_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (NT-Xent) between two views: row i of `a` and row i of `b` are the positive pair."""
    a = F.normalize(embeds_a.float(), dim=-1)
    b = F.normalize(embeds_b.float(), dim=-1)
    logits = a @ b.t() / temperature
    targets = torch.arange(a.size(0), device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def super_resolution_l1(sr_pixel_values: torch.Tensor, hr_pixel_values: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the super-resolved image and the real higher-resolution image."""
    if sr_pixel_values.shape != hr_pixel_values.shape:
        raise ValueError(
            f"hr_pixel_values has shape {tuple(hr_pixel_values.shape)}, expected {tuple(sr_pixel_values.shape)} "
            "(image_size * sr_scale)"
        )
    return F.l1_loss(sr_pixel_values.float(), hr_pixel_values.float())


def teacher_distillation(student_grids: list[torch.Tensor], teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean over grid cells of 1 - cosine similarity between each student grid and the teacher's, averaged over the
    student grids (the branches present). All grids are (batch, cells, channels)."""
    for grid in student_grids:
        if grid.shape != teacher_features.shape:
            raise ValueError(
                f"teacher_features has shape {tuple(teacher_features.shape)}, expected {tuple(grid.shape)} "
                "(batch, grid_size**2, backbone channels)"
            )
    teacher = teacher_features.float()
    losses = [(1.0 - F.cosine_similarity(grid.float(), teacher, dim=-1)).mean() for grid in student_grids]
    return torch.stack(losses).mean()


def tag_binary_cross_entropy(tag_logits: torch.Tensor, tag_labels: torch.Tensor) -> torch.Tensor:
    """Multi-label binary cross-entropy of the tag head, averaged over images and tags."""
    if tag_logits.shape != tag_labels.shape:
        raise ValueError(f"tag_labels has shape {tuple(tag_labels.shape)}, expected {tuple(tag_logits.shape)}")
    return F.binary_cross_entropy_with_logits(tag_logits.float(), tag_labels.float())
