"""SOLI: super-resolution + siamese MobileNetV2 encoder + attention LSTM decoder (see DESIGN.md, "The method").

Reading order: the super-resolution module, the semantic tag head, the siamese encoder (both branches, one
backbone), the additive attention and the LSTM decoder, then `SoliForConditionalGeneration`, which adds the losses
and plugs the decoder's LSTM state into transformers' `generate()` as its "cache".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, MobileNetV2Config, MobileNetV2Model, PreTrainedModel
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput

from .configuration_soli import SoliConfig
from .losses_soli import (
    IGNORE_INDEX,
    caption_cross_entropy,
    super_resolution_l1,
    symmetric_info_nce,
    tag_binary_cross_entropy,
    teacher_distillation,
)

_AUTO_MODEL_CLASSES = ("AutoModel", "AutoModelForImageTextToText")
DEFAULT_MAX_NEW_TOKENS = 24  # Flickr8k captions: 10.8 words on average, 99% have at most 22

try:  # transformers >= 5: these initialisers leave weights that were loaded from a checkpoint untouched
    from transformers import initialization as init
except ImportError:  # transformers 4.x skips loaded modules itself
    from torch.nn import init


@dataclass
class SoliEncoderOutput(ModelOutput):
    """
    Output of the siamese encoder.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, cells, hidden_size)`):
            The attention memory M: the LR grid, or the average of the LR and SR grids (`cells = grid_size**2`),
            followed by the tag token with `tags_in_memory` (`cells = grid_size**2 + 1`).
        attention_keys (`torch.FloatTensor` of shape `(batch, cells, attention_size)`):
            M projected into the additive-attention space, computed once per image.
        lr_image_embeds (`torch.FloatTensor` of shape `(batch, hidden_size)`):
            Mean-pooled embedding of the LR branch.
        sr_image_embeds (`torch.FloatTensor` of shape `(batch, hidden_size)`, *optional*):
            Mean-pooled embedding of branch B, the SR branch (absent with `inference_branches="lr"` at inference).
        sr_pixel_values (`torch.FloatTensor` of shape `(batch, 3, H*r, W*r)`, *optional*):
            Output of the super-resolution module (absent without it: `branch_b_input="bicubic"`, the baseline).
        lr_backbone_grid / sr_backbone_grid (`torch.FloatTensor` of shape `(batch, grid_size**2, channels)`,
            *optional*): each branch's pooled backbone grid before the projection (with `output_backbone_grids`).
        tag_logits (`torch.FloatTensor` of shape `(batch, num_tags)`, *optional*):
            The tag head's logits (with `output_tag_logits`, or always with `tags_in_memory`).
    """

    last_hidden_state: torch.FloatTensor | None = None
    attention_keys: torch.FloatTensor | None = None
    lr_image_embeds: torch.FloatTensor | None = None
    sr_image_embeds: torch.FloatTensor | None = None
    sr_pixel_values: torch.FloatTensor | None = None
    lr_backbone_grid: torch.FloatTensor | None = None
    sr_backbone_grid: torch.FloatTensor | None = None
    tag_logits: torch.FloatTensor | None = None


@dataclass
class SoliCaptioningOutput(ModelOutput):
    """
    Output of [`SoliForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor`, *optional*): total loss (when `labels` given), `caption_loss +
            contrastive_weight * contrastive_loss + sr_loss_weight * sr_loss + distillation_weight *
            distillation_loss + tag_loss_weight * tag_loss`, over the parts present.
        logits (`torch.FloatTensor` of shape `(batch, seq_len, vocab_size)`): `logits[:, t]` predicts token t+1.
        caption_loss / contrastive_loss / sr_loss / distillation_loss / tag_loss (`torch.FloatTensor`,
            *optional*): the loss parts, each present when its inputs are (labels; both branches and batch > 1;
            `hr_pixel_values`; `teacher_features` and `distillation_weight > 0`; `tag_labels`, a tag head and
            `tag_loss_weight > 0`).
        past_key_values (`SoliDecoderState`, *optional*): the LSTM state after the last token, for `generate()`.
        lr_image_embeds / sr_image_embeds (`torch.FloatTensor`): pooled embeddings of the two branches.
        sr_pixel_values (`torch.FloatTensor`, *optional*): the super-resolved image.
        encoder_last_hidden_state (`torch.FloatTensor`): the attention memory.
        attentions (`torch.FloatTensor` of shape `(batch, seq_len, cells)`, *optional*): attention weights
            of each decoding step (with `output_attentions=True`).
        tag_logits (`torch.FloatTensor` of shape `(batch, num_tags)`, *optional*): the tag head's logits, per image
            (when the model has a tag head and encoded the images itself).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    sr_loss: torch.FloatTensor | None = None
    distillation_loss: torch.FloatTensor | None = None
    tag_loss: torch.FloatTensor | None = None
    past_key_values: SoliDecoderState | None = None
    lr_image_embeds: torch.FloatTensor | None = None
    sr_image_embeds: torch.FloatTensor | None = None
    sr_pixel_values: torch.FloatTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    attentions: torch.FloatTensor | None = None
    tag_logits: torch.FloatTensor | None = None


class SoliDecoderState:
    """The LSTM state that `generate()` carries between decoding steps (transformers' "cache").

    Beam search calls `reorder_cache(beam_idx)` after every step so that each surviving beam continues from the
    state of the beam it was extended from.
    """

    is_compileable = False

    def __init__(self, hidden: torch.Tensor, cell: torch.Tensor, seen_tokens: int) -> None:
        self.hidden = hidden
        self.cell = cell
        self.seen_tokens = seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select (and duplicate) rows of the state, in place."""
        self.hidden = self.hidden.index_select(0, beam_idx.to(self.hidden.device))
        self.cell = self.cell.index_select(0, beam_idx.to(self.cell.device))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of tokens already consumed."""
        return self.seen_tokens


class SmallInitConv2d(nn.Conv2d):
    """A convolution whose weights start near zero (normal, std 1e-3; SOLI's `_init_weights` knows it by its
    type): the SR module starts as almost plain bicubic upsampling, yet every SR weight gets a gradient."""


class BicubicUpsample(nn.Module):
    """Plain bicubic upsampling by an integer `scale` (`F.interpolate`, `align_corners=False`): what branch B sees at
    curriculum_alpha = 0 (and always with `branch_b_input="bicubic"`), and the LR branch's input with
    `lr_branch_upsample > 1`. A module without weights, so that an exporter can put an equal one in its place."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.interpolate(pixel_values, scale_factor=self.scale, mode="bicubic", align_corners=False)


class SoliSuperResolution(nn.Module):
    """ESPCN-style sub-pixel CNN: `x_sr = bicubic_upsample(x_lr) + PixelShuffle(convs(x_lr))`.

    The last convolution starts near zero, so an untrained module returns almost the bicubic upsample.
    """

    def __init__(self, config: SoliConfig) -> None:
        super().__init__()
        width, scale = config.sr_hidden_channels, config.sr_scale
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=5, padding=2),
            nn.Tanh(),
            nn.Conv2d(width, width // 2, kernel_size=3, padding=1),
            nn.Tanh(),
        )
        self.to_subpixels = SmallInitConv2d(width // 2, 3 * scale * scale, kernel_size=3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.upsample = BicubicUpsample(scale)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(super_resolved, bicubic_upsampled)`."""
        upsampled = self.upsample(pixel_values)
        return upsampled + self.shuffle(self.to_subpixels(self.body(pixel_values))), upsampled


def projection_head(in_features: int, hidden_features: int, out_features: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear: the small MLP of the contrastive and tag heads."""
    return nn.Sequential(nn.Linear(in_features, hidden_features), nn.ReLU(), nn.Linear(hidden_features, out_features))


class SoliSemanticTags(nn.Module):
    """Multi-label head over the `num_tags` tag words, on the mean of the image memory. With `tags_in_memory` it
    also holds a learned embedding per tag; their mean, weighted by the predicted tag probabilities, is one more
    memory token for the decoder to attend to."""

    def __init__(self, config: SoliConfig) -> None:
        super().__init__()
        self.classifier = projection_head(config.hidden_size, config.hidden_size, config.num_tags)
        self.embeddings = nn.Embedding(config.num_tags, config.hidden_size) if config.tags_in_memory else None

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        """Tag logits (batch, num_tags) of the memory grid (batch, cells, hidden_size)."""
        return self.classifier(memory.mean(dim=1))

    def memory_token(self, tag_logits: torch.Tensor) -> torch.Tensor:
        """The probability-weighted mean of the tag embeddings: (batch, 1, hidden_size)."""
        probabilities = tag_logits.sigmoid()
        # A weighted mean, not a sum, keeps the token's scale independent of how many tags an image seems to have.
        weights = probabilities / probabilities.sum(dim=-1, keepdim=True).clamp_min(1e-6)
        return (weights @ self.embeddings.weight).unsqueeze(1)


class SoliSiameseEncoder(nn.Module):
    """One MobileNetV2 applied to the LR image (branch A) and to its super-resolved copy (branch B); the two grids
    are averaged.

    The ablations of `config.branch_b_input` and `config.lr_branch_upsample` change only what the branches see:
    branch B the plain bicubic upsample (`bicubic_upsample`, no SR module), or the single LR branch a bicubic
    upsample of the LR image (`lr_upsample`)."""

    main_input_name = "pixel_values"

    def __init__(self, config: SoliConfig) -> None:
        super().__init__()
        self.config = config
        has_sr_module = config.use_sr_branch and config.branch_b_input == "super_resolved"
        self.super_resolution = SoliSuperResolution(config) if has_sr_module else None
        self.bicubic_upsample = BicubicUpsample(config.sr_scale) if config.branch_b_input == "bicubic" else None
        self.lr_upsample = BicubicUpsample(config.lr_branch_upsample) if config.lr_branch_upsample > 1 else None
        self.backbone = MobileNetV2Model(config.backbone_config, add_pooling_layer=False)
        self.pool = nn.AdaptiveAvgPool2d(config.grid_size)
        self.projection = nn.Linear(self.backbone.conv_1x1.convolution.out_channels, config.hidden_size)
        self.attention_keys = nn.Linear(config.hidden_size, config.attention_size)
        self.tags = SoliSemanticTags(config) if config.num_tags > 0 else None

    def backbone_grid(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone -> average pool to grid x grid: (batch, grid**2, channels), what distillation compares with the
        teacher's grid."""
        features = self.backbone(pixel_values, return_dict=True).last_hidden_state
        return self.pool(features).flatten(2).transpose(1, 2)

    def encode_branch(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone -> average pool to grid x grid -> project: (batch, grid**2, hidden_size)."""
        return self.projection(self.backbone_grid(pixel_values))

    def uses_both_branches(self) -> bool:
        """Training uses both branches (when the model has branch B); inference follows
        `config.inference_branches`."""
        return self.config.use_sr_branch and (self.training or self.config.inference_branches == "both")

    def branch_b_pixels(
        self, pixel_values: torch.Tensor, curriculum_alpha: float | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What branch B encodes, and the SR module's output (None without the SR module).

        With the SR module, `curriculum_alpha` blends from the bicubic upsample (0) to the SR output (1, the
        default); with `branch_b_input="bicubic"` branch B is always the bicubic upsample and alpha is ignored."""
        if self.super_resolution is None:
            return self.bicubic_upsample(pixel_values), None
        alpha = 1.0 if curriculum_alpha is None else float(curriculum_alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"curriculum_alpha must be in [0, 1], got {alpha}")
        sr_pixel_values, upsampled = self.super_resolution(pixel_values)
        branch_b = sr_pixel_values if alpha == 1.0 else alpha * sr_pixel_values + (1.0 - alpha) * upsampled
        return branch_b, sr_pixel_values

    def forward(
        self,
        pixel_values: torch.Tensor,
        curriculum_alpha: float | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_backbone_grids: bool = False,
        output_tag_logits: bool = False,
    ) -> SoliEncoderOutput:
        """Encode LR pixels. `curriculum_alpha` blends branch B's input from bicubic (0) to super-resolved (1)
        (`branch_b_pixels`).

        `output_backbone_grids` and `output_tag_logits` add what the training-only losses need; they are off by
        default so that `generate()` and the ONNX encoder compute nothing else (the tag head still runs, and adds
        its token to the memory, with `tags_in_memory`)."""
        if pixel_values is None or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"pixel_values must have shape (batch, 3, height, width), got {shape}")
        branch_a = pixel_values if self.lr_upsample is None else self.lr_upsample(pixel_values)
        lr_backbone_grid = self.backbone_grid(branch_a)
        lr_grid = self.projection(lr_backbone_grid)
        sr_backbone_grid = sr_grid = sr_pixel_values = None
        if self.uses_both_branches():
            branch_b, sr_pixel_values = self.branch_b_pixels(pixel_values, curriculum_alpha)
            sr_backbone_grid = self.backbone_grid(branch_b)
            sr_grid = self.projection(sr_backbone_grid)
        memory = lr_grid if sr_grid is None else 0.5 * (lr_grid + sr_grid)
        if sr_grid is not None and self.training and self.config.lr_only_probability > 0:
            # train the half-cost mode too: some images decode from their LR grid alone, as with "lr" at inference
            lr_only = torch.rand(memory.shape[0], 1, 1, device=memory.device) < self.config.lr_only_probability
            memory = torch.where(lr_only, lr_grid, memory)
        tag_logits = None
        if self.tags is not None and (output_tag_logits or self.config.tags_in_memory):
            tag_logits = self.tags(memory)
            if self.config.tags_in_memory:
                memory = torch.cat([memory, self.tags.memory_token(tag_logits)], dim=1)
        return SoliEncoderOutput(
            last_hidden_state=memory,
            attention_keys=self.attention_keys(memory),
            lr_image_embeds=lr_grid.mean(dim=1),
            sr_image_embeds=None if sr_grid is None else sr_grid.mean(dim=1),
            sr_pixel_values=sr_pixel_values,
            lr_backbone_grid=lr_backbone_grid if output_backbone_grids else None,
            sr_backbone_grid=sr_backbone_grid if output_backbone_grids else None,
            tag_logits=tag_logits,
        )


class SoliAdditiveAttention(nn.Module):
    """Bahdanau attention: `softmax(v . tanh(K + W h))` over the memory grid."""

    def __init__(self, config: SoliConfig) -> None:
        super().__init__()
        self.query = nn.Linear(config.hidden_size, config.attention_size)
        self.score = nn.Linear(config.attention_size, 1)

    def forward(
        self, memory: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the context vector (batch, hidden_size) and the weights (batch, grid**2)."""
        scores = self.score(torch.tanh(keys + self.query(hidden).unsqueeze(1))).squeeze(-1)
        weights = scores.softmax(dim=-1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class SoliAttentionDecoder(nn.Module):
    """Show-Attend-Tell decoder: attend, gate the context, LSTMCell on [word; context], predict the next word."""

    def __init__(self, config: SoliConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.attention = SoliAdditiveAttention(config)
        self.context_gate = nn.Linear(config.hidden_size, config.hidden_size)
        self.lstm = nn.LSTMCell(config.embedding_size + config.hidden_size, config.hidden_size)
        self.init_hidden = nn.Linear(config.hidden_size, config.hidden_size)
        self.init_cell = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.decoder_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)

    def initial_state(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h0, c0 from the mean of the memory grid."""
        mean = memory.mean(dim=1)
        return torch.tanh(self.init_hidden(mean)), torch.tanh(self.init_cell(mean))

    def forward(
        self,
        input_ids: torch.LongTensor,
        memory: torch.Tensor,
        keys: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        sampling_probability: float = 0.0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Run the LSTM over `input_ids` (batch, steps); returns logits, final (h, c) and attention weights.

        With `sampling_probability` > 0 (scheduled sampling, a training option), each row's input word at each step
        after the first is, with that probability, one drawn from the row's own prediction at the step before
        instead of the reference's: the decoder learns to go on from its own words, as it must when generating."""
        hidden, cell = state
        embeddings = self.embed_tokens(input_ids)
        step_logits, step_weights = [], []
        for step in range(input_ids.shape[1]):
            words = embeddings[:, step]
            if sampling_probability > 0 and step > 0:
                words = self.mix_in_sampled_words(words, step_logits[-1], sampling_probability)
            context, weights = self.attention(memory, keys, hidden)
            context = torch.sigmoid(self.context_gate(hidden)) * context
            hidden, cell = self.lstm(torch.cat([words, context], dim=-1), (hidden, cell))
            step_logits.append(self.lm_head(self.dropout(hidden)))
            step_weights.append(weights)
        return torch.stack(step_logits, dim=1), (hidden, cell), torch.stack(step_weights, dim=1)

    def mix_in_sampled_words(
        self, reference_words: torch.Tensor, previous_logits: torch.Tensor, probability: float
    ) -> torch.Tensor:
        """Scheduled sampling: per row, with `probability`, the embedding of a word drawn from `previous_logits`
        (no gradient through the draw) in place of `reference_words`."""
        sampled = previous_logits.detach().float().softmax(dim=-1).multinomial(1).squeeze(1)
        use_sampled = torch.rand(sampled.shape, device=sampled.device) < probability
        return torch.where(use_sampled.unsqueeze(1), self.embed_tokens(sampled), reference_words)


class SoliPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading plumbing shared by SOLI models."""

    config_class = SoliConfig
    config: SoliConfig
    base_model_prefix = "soli"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> SoliPreTrainedModel:
        """`PreTrainedModel.from_pretrained` restricted to safetensors weights: loading never unpickles."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Near-zero for the last SR convolution (SR starts as bicubic upsampling), PyTorch's uniform for the LSTM
        cell, transformers' defaults (normal(0, initializer_range)) for everything else. The backbone, a
        PreTrainedModel of its own, keeps MobileNetV2's initialisation (or its pretrained weights)."""
        if isinstance(module, SmallInitConv2d):
            init.normal_(module.weight, std=1e-3)
            init.zeros_(module.bias)
        elif isinstance(module, nn.LSTMCell):
            bound = module.hidden_size**-0.5
            for parameter in module.parameters():
                init.uniform_(parameter, -bound, bound)
        else:
            super()._init_weights(module)


class SoliForConditionalGeneration(SoliPreTrainedModel, GenerationMixin):
    """
    The SOLI captioner. `forward()` trains it (caption cross-entropy + contrastive + SR losses), `generate()`
    captions images with greedy search, beam search (the LSTM state reordered per beam) or sampling.

    Example:

    ```python
    >>> from transformers import AutoModelForImageTextToText, AutoProcessor
    >>> model = AutoModelForImageTextToText.from_pretrained("models/soli-flickr8k-lr64")
    >>> processor = AutoProcessor.from_pretrained("models/soli-flickr8k-lr64")
    >>> inputs = processor(images=image, return_tensors="pt")
    >>> captions = processor.batch_decode(model.generate(**inputs, num_beams=3), skip_special_tokens=True)
    ```
    """

    _is_stateful = True

    def __init__(self, config: SoliConfig) -> None:
        super().__init__(config)
        self.encoder = SoliSiameseEncoder(config)
        self.decoder = SoliAttentionDecoder(config)
        self.contrastive_head = (
            projection_head(config.hidden_size, config.hidden_size, config.projection_dim)
            if config.use_sr_branch
            else None
        )
        self.post_init()
        self.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    @classmethod
    def from_pretrained_backbone(
        cls, backbone_name_or_path: str, output_stride: int = 16, **config_kwargs: Any
    ) -> SoliForConditionalGeneration:
        """A new SOLI whose shared encoder starts from pretrained MobileNetV2 weights (a folder or Hub id).

        The backbone weights are copied in after construction, so weight initialisation cannot overwrite them;
        `output_stride` only changes the dilation, not the weights.
        """
        backbone_config = MobileNetV2Config.from_pretrained(backbone_name_or_path, output_stride=output_stride)
        model = cls(SoliConfig(backbone_config=_without_classifier_labels(backbone_config), **config_kwargs))
        pretrained = MobileNetV2Model.from_pretrained(
            backbone_name_or_path, config=backbone_config, add_pooling_layer=False
        )
        model.encoder.backbone.load_state_dict(pretrained.state_dict())
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, plus what `trust_remote_code` users need: `auto_map` entries for
        both AutoModel and AutoModelForImageTextToText, and the SOLI pipeline's code."""
        class_reference = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update({auto_class: class_reference for auto_class in _AUTO_MODEL_CLASSES})
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)
        from .pipeline_soli import SoliImageTextToTextPipeline

        custom_object_save(SoliImageTextToTextPipeline, save_directory)

    def get_encoder(self) -> SoliSiameseEncoder:
        return self.encoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The decoder's state is an LSTM (h, c), not attention keys/values: forward() returns it itself.
        return False

    def train(self, mode: bool = True) -> SoliForConditionalGeneration:
        """Like `nn.Module.train`, but keeps the backbone's batch norm in eval mode when configured to."""
        super().train(mode)
        if mode and self.config.freeze_backbone_batch_norm:
            for module in self.encoder.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        hr_pixel_values: torch.FloatTensor | None = None,
        curriculum_alpha: float | None = None,
        sampling_probability: float | None = None,
        teacher_features: torch.FloatTensor | None = None,
        tag_labels: torch.FloatTensor | None = None,
        encoder_outputs: SoliEncoderOutput | None = None,
        past_key_values: SoliDecoderState | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SoliCaptioningOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch, 3, image_size, image_size)`):
                The low-resolution images, from [`SoliImageProcessor`].
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Caption tokens starting with `<bos>` (teacher forcing). Defaults to `labels`.
            attention_mask (`torch.LongTensor`, *optional*):
                1 for real tokens, 0 for padding; padded positions are left out of the caption loss.
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                The same caption tokens (-100 or padding where ignored); `logits[:, t]` is scored on
                `labels[:, t + 1]`.
                Captions may outnumber images by a whole factor k (`k * batch` rows, the captions of image i in
                rows `i*k` to `i*k + k - 1`): each image is then encoded once and its memory shared by its k
                captions, while the contrastive and SR losses stay per image.
            hr_pixel_values (`torch.FloatTensor`, *optional*):
                The real higher-resolution image (`image_size * sr_scale`), target of the SR loss.
            curriculum_alpha (`float`, *optional*, defaults to 1.0):
                What branch B sees: 0 = bicubic upsample of the LR image, 1 = the SR output, a blend between.
            sampling_probability (`float`, *optional*, defaults to 0.0):
                Scheduled sampling (training): the chance that a step's input word is drawn from the decoder's own
                prediction at the step before instead of taken from `input_ids`.
            teacher_features (`torch.FloatTensor` of shape `(batch, grid_size**2, channels)`, *optional*):
                A frozen high-resolution teacher's pooled feature grid of each image (one row per image), target of
                the distillation loss (computed when `config.distillation_weight > 0`).
            tag_labels (`torch.FloatTensor` of shape `(batch, num_tags)`, *optional*):
                Multi-hot targets of the tag head (one row per image): 1 where the image's references contain
                the tag word.
            encoder_outputs / past_key_values / use_cache:
                Used by `generate()`: reuse the encoded images, continue from the LSTM state, and return the
                new state (only when `use_cache=True`).
        """
        if input_ids is None and labels is None:
            raise ValueError("SoliForConditionalGeneration.forward needs `input_ids` or `labels` (caption tokens)")
        if input_ids is None:
            input_ids = labels.masked_fill(labels == IGNORE_INDEX, self.config.pad_token_id)
        distill = teacher_features is not None and self.config.distillation_weight > 0
        if encoder_outputs is None:
            if pixel_values is None:
                raise ValueError("SoliForConditionalGeneration.forward needs `pixel_values` or `encoder_outputs`")
            encoder_outputs = self.encoder(
                pixel_values,
                curriculum_alpha=curriculum_alpha,
                output_backbone_grids=distill,
                output_tag_logits=self.encoder.tags is not None,
            )
        memory, keys = _repeat_per_caption(
            (encoder_outputs.last_hidden_state, encoder_outputs.attention_keys), input_ids.shape[0]
        )
        if past_key_values is None:
            state, seen_tokens = self.decoder.initial_state(memory), 0
        else:
            state, seen_tokens = (past_key_values.hidden, past_key_values.cell), past_key_values.seen_tokens
        sampling_probability = 0.0 if sampling_probability is None else float(sampling_probability)
        if not 0.0 <= sampling_probability <= 1.0:
            raise ValueError(f"sampling_probability must be in [0, 1], got {sampling_probability}")
        logits, (hidden, cell), attention_weights = self.decoder(input_ids, memory, keys, state, sampling_probability)

        caption_loss = contrastive_loss = sr_loss = distillation_loss = tag_loss = loss = None
        if labels is not None:
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
            caption_loss = caption_cross_entropy(logits, labels, self.config.pad_token_id, self.config.label_smoothing)
        if encoder_outputs.sr_image_embeds is not None and encoder_outputs.sr_image_embeds.shape[0] > 1:
            contrastive_loss = symmetric_info_nce(
                self.contrastive_head(encoder_outputs.lr_image_embeds),
                self.contrastive_head(encoder_outputs.sr_image_embeds),
                self.config.contrastive_temperature,
            )
        if hr_pixel_values is not None and encoder_outputs.sr_pixel_values is not None:
            sr_loss = super_resolution_l1(encoder_outputs.sr_pixel_values, hr_pixel_values)
        if distill and encoder_outputs.lr_backbone_grid is not None:
            grids = [encoder_outputs.lr_backbone_grid, encoder_outputs.sr_backbone_grid]
            distillation_loss = teacher_distillation([grid for grid in grids if grid is not None], teacher_features)
        if tag_labels is not None and encoder_outputs.tag_logits is not None and self.config.tag_loss_weight > 0:
            tag_loss = tag_binary_cross_entropy(encoder_outputs.tag_logits, tag_labels)
        if caption_loss is not None:
            loss = caption_loss
            for part, weight in (
                (contrastive_loss, self.config.contrastive_weight),
                (sr_loss, self.config.sr_loss_weight),
                (distillation_loss, self.config.distillation_weight),
                (tag_loss, self.config.tag_loss_weight),
            ):
                if part is not None:
                    loss = loss + weight * part

        return SoliCaptioningOutput(
            loss=loss,
            logits=logits,
            caption_loss=caption_loss,
            contrastive_loss=contrastive_loss,
            sr_loss=sr_loss,
            distillation_loss=distillation_loss,
            tag_loss=tag_loss,
            past_key_values=SoliDecoderState(hidden, cell, seen_tokens + input_ids.shape[1]) if use_cache else None,
            lr_image_embeds=encoder_outputs.lr_image_embeds,
            sr_image_embeds=encoder_outputs.sr_image_embeds,
            sr_pixel_values=encoder_outputs.sr_pixel_values,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            attentions=attention_weights if output_attentions else None,
            tag_logits=encoder_outputs.tag_logits,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: SoliDecoderState | None = None,
        encoder_outputs: SoliEncoderOutput | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """With a state, feed only the newest token; without one (use_cache=False), re-run the whole prefix."""
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
        return {
            "input_ids": input_ids,
            "encoder_outputs": encoder_outputs,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
        }


def _repeat_per_caption(tensors: tuple[torch.Tensor, ...], num_captions: int) -> tuple[torch.Tensor, ...]:
    """Repeat per-image tensors so that each of an image's k consecutive captions gets its own row."""
    num_images = tensors[0].shape[0]
    if num_captions == num_images:
        return tensors
    if num_captions % num_images:
        raise ValueError(
            f"got {num_captions} captions for {num_images} images: the number of captions must be a multiple of "
            "the number of images (k captions per image, in consecutive rows)"
        )
    return tuple(tensor.repeat_interleave(num_captions // num_images, dim=0) for tensor in tensors)


def _without_classifier_labels(config: MobileNetV2Config) -> MobileNetV2Config:
    """The backbone config without the 1,000 ImageNet label names (the classifier head is not used)."""
    values = config.to_dict()
    for key in ("id2label", "label2id", "architectures", "model_type", "transformers_version"):
        values.pop(key, None)
    return MobileNetV2Config(**values)
