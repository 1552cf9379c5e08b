"""Configuration of the AlignCap region captioner (issue 18; DESIGN.md, "More families, one surface").

Region-level captioning after AlignCap: frozen image encoders, region features by RoIAlign plus the photo's global
context, the box geometry and object evidence from a frozen segmenter; a Latent Feature Refinement Module (a tag head
whose predicted tags refine the region latent, losses `L_tag` and `L_cond`) and a Semantic Space Alignment Module (a
projection into the decoder's embedding space, loss `L_multi`); total `alpha L_tag + beta L_cap + gamma L_cond +
lambda L_multi`. The stand-ins this package has: MobileNetV2 (ImageNet) as the global encoder, DeepLabV3-MobileNetV2
(Pascal VOC, 21 classes) as the dense encoder and the object evidence, SmolLM2-135M-Instruct as the frozen language
model, and SOLI's attention LSTM as the light decoder.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, MobileNetV2Config, PretrainedConfig

from .configuration_dual_qformer import smollm2_135m_config, sub_config

DECODER_TYPES = ("lstm", "language_model")
#: Pascal VOC: background and 20 object classes, the DeepLabV3 segmenter's output.
NUM_OBJECT_CLASSES = 21
#: The normalised box geometry the model embeds: x0, y0, x1, y1, width, height, area (each in [0, 1]).
NUM_BOX_GEOMETRY = 7

# The region-to-text pipeline shipped beside the weights, for processes that load a saved folder with
# `trust_remote_code=True` and cannot import soli_hf (see `AlignCapConfig.to_dict`).
REMOTE_CUSTOM_PIPELINES = {
    "region-to-text": {
        "impl": "pipeline_aligncap.AlignCapRegionToTextPipeline",
        "pt": ["AutoModelForImageTextToText"],
        "type": "multimodal",
    }
}


def default_global_encoder_config() -> MobileNetV2Config:
    """MobileNetV2 1.0 at output stride 16: a 14x14 grid at 224x224, fine enough for RoIAlign on small boxes."""
    return MobileNetV2Config(output_stride=16)


def default_dense_encoder_config() -> MobileNetV2Config:
    """DeepLabV3-MobileNetV2 1.0: output stride 8 (a 28x28 grid at 224x224) and the 21 Pascal VOC classes."""
    return MobileNetV2Config(output_stride=8, num_labels=NUM_OBJECT_CLASSES)


class AlignCapConfig(PretrainedConfig):
    r"""
    Configuration of an [`AlignCapForConditionalGeneration`] region captioner.

    Args:
        global_encoder_config (`MobileNetV2Config` or `dict`, *optional*):
            The frozen global image encoder (ImageNet MobileNetV2). Defaults to MobileNetV2 1.0 at output stride 16.
        dense_encoder_config (`MobileNetV2Config` or `dict`, *optional*):
            The frozen dense encoder and segmenter (DeepLabV3-MobileNetV2, `num_labels` classes, class 0 background).
            Defaults to output stride 8 and the 21 Pascal VOC classes.
        decoder_type (`str`, *optional*, defaults to `"lstm"`):
            `"lstm"`: SOLI's attention LSTM reads the region tokens as its attention memory (light, trained).
            `"language_model"`: the frozen causal language model of `text_config` reads them as a soft prompt.
        text_config (`PretrainedConfig` or `dict`, *optional*):
            The frozen language model of the `"language_model"` decoder. Defaults to SmolLM2-135M's architecture.
        image_size (`int`, *optional*, defaults to 64):
            Side of the photo the processor gives the model (`pixel_values`): 64 (low resolution) or 224; boxes are
            scaled to it.
        global_image_size / dense_image_size (`int`, *optional*, defaults to 224 / 224):
            Each encoder sees `pixel_values` bicubic-upsampled to this side.
        global_final_conv (`bool`, *optional*, defaults to `True`):
            The global features are MobileNetV2's last 1x1 convolution (1,280 channels) or its last block (320). The
            dense encoder never has that convolution (DeepLabV3 never trained it): its features are 320 channels.
        roi_output_size (`int`, *optional*, defaults to 4):
            RoIAlign pools each box to `roi_output_size x roi_output_size` cells of each encoder's grid.
        region_hidden_size (`int`, *optional*, defaults to 256):
            Width of the region tokens (RoI cells, global context, box geometry, object evidence) and the tag
            embeddings.
        region_num_heads (`int`, *optional*, defaults to 4):
            Heads of the refinement's cross-attention from the region tokens to the tag embeddings.
        region_dropout (`float`, *optional*, defaults to 0.1):
            Dropout of the region tokens and of the refinement's attention and feed-forward blocks.
        use_object_evidence (`bool`, *optional*, defaults to `True`):
            Add the object evidence token: the box's histogram of the segmenter's 21 classes and its objectness.
        tag_words (`list[str]`, *optional*):
            The tag vocabulary, frequent content words of the training phrases, in the tag head's order.
            `num_tags` is its length. A model with the refinement module needs at least one.
        use_refinement (`bool`, *optional*, defaults to `True`):
            The Latent Feature Refinement Module (tag head, tag cross-attention, `L_tag`, `L_cond`); needs
            `tag_words`. `False` (with `tag_loss_weight = cond_loss_weight = 0`) leaves the region tokens as they are.
        use_alignment (`bool`, *optional*, defaults to `True`):
            The Semantic Space Alignment Module: an MLP projection into the decoder's embedding space and `L_multi`.
            `False` (with `multi_loss_weight = 0`) is one linear layer and no alignment loss: with
            `use_refinement=False` and `use_object_evidence=False`, the plain region captioner.
        tag_loss_weight / caption_loss_weight / cond_loss_weight / multi_loss_weight (`float`, *optional*,
            defaults to 1.0): alpha, beta, gamma and lambda of the total loss. 0 turns a loss off: it is not
            computed (and is `None` in the output).
        projection_dim (`int`, *optional*, defaults to 128):
            Width of the `L_cond` space shared by the refined region latent and the phrase's text embedding.
        cond_temperature / multi_temperature (`float`, *optional*, defaults to 0.07):
            Temperatures of the two InfoNCE losses.
        hidden_size / embedding_size / attention_size / decoder_dropout / vocab_size (*optional*, defaults to 512,
            256, 256, 0.3, 10000): the LSTM decoder's sizes, as in [`SoliConfig`] (word-level vocabulary).
        prepend_bos (`bool`, *optional*, defaults to `True`):
            The language model reads its beginning-of-sequence token before the soft prompt.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the trained linear layers and embeddings.
    """

    model_type = "aligncap"
    sub_configs = {
        "global_encoder_config": MobileNetV2Config,
        "dense_encoder_config": MobileNetV2Config,
        "text_config": AutoConfig,
    }

    def __init__(
        self,
        global_encoder_config: MobileNetV2Config | dict[str, Any] | None = None,
        dense_encoder_config: MobileNetV2Config | dict[str, Any] | None = None,
        decoder_type: str = "lstm",
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        image_size: int = 64,
        global_image_size: int = 224,
        dense_image_size: int = 224,
        global_final_conv: bool = True,
        roi_output_size: int = 4,
        region_hidden_size: int = 256,
        region_num_heads: int = 4,
        region_dropout: float = 0.1,
        use_object_evidence: bool = True,
        tag_words: list[str] | None = None,
        use_refinement: bool = True,
        use_alignment: bool = True,
        tag_loss_weight: float = 1.0,
        caption_loss_weight: float = 1.0,
        cond_loss_weight: float = 1.0,
        multi_loss_weight: float = 1.0,
        projection_dim: int = 128,
        cond_temperature: float = 0.07,
        multi_temperature: float = 0.07,
        hidden_size: int = 512,
        embedding_size: int = 256,
        attention_size: int = 256,
        decoder_dropout: float = 0.3,
        vocab_size: int = 10000,
        prepend_bos: bool = True,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        if decoder_type not in DECODER_TYPES:
            raise ValueError(f"decoder_type must be one of {DECODER_TYPES}, got {decoder_type!r}")
        tag_words = list(tag_words or [])
        if len(set(tag_words)) != len(tag_words):
            raise ValueError(
                f"tag_words holds a word twice: {sorted(w for w in set(tag_words) if tag_words.count(w) > 1)}"
            )
        weights = {
            "tag_loss_weight": tag_loss_weight,
            "caption_loss_weight": caption_loss_weight,
            "cond_loss_weight": cond_loss_weight,
            "multi_loss_weight": multi_loss_weight,
        }
        for name, weight in weights.items():
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0 (0: the loss is off), got {weight!r}")
        if not use_refinement and (tag_loss_weight or cond_loss_weight):
            raise ValueError(
                "without the refinement module (use_refinement=False) there is no L_tag or L_cond: set "
                f"tag_loss_weight and cond_loss_weight to 0 (got {tag_loss_weight} and {cond_loss_weight})"
            )
        if not use_alignment and multi_loss_weight:
            raise ValueError(
                "without the alignment module (use_alignment=False) there is no L_multi: set multi_loss_weight to 0 "
                f"(got {multi_loss_weight})"
            )
        if region_hidden_size % region_num_heads:
            raise ValueError(
                f"region_hidden_size ({region_hidden_size}) must be a multiple of region_num_heads ({region_num_heads})"
            )
        if roi_output_size < 1:
            raise ValueError(f"roi_output_size must be >= 1, got {roi_output_size!r}")
        self.global_encoder_config = sub_config(global_encoder_config, default_global_encoder_config())
        self.dense_encoder_config = sub_config(dense_encoder_config, default_dense_encoder_config())
        self.decoder_type = decoder_type
        self.text_config = sub_config(text_config, smollm2_135m_config())
        self.image_size = image_size
        self.global_image_size = global_image_size
        self.dense_image_size = dense_image_size
        self.global_final_conv = global_final_conv
        self.roi_output_size = roi_output_size
        self.region_hidden_size = region_hidden_size
        self.region_num_heads = region_num_heads
        self.region_dropout = region_dropout
        self.use_object_evidence = use_object_evidence
        self.tag_words = tag_words
        self.use_refinement = use_refinement
        self.use_alignment = use_alignment
        self.tag_loss_weight = tag_loss_weight
        self.caption_loss_weight = caption_loss_weight
        self.cond_loss_weight = cond_loss_weight
        self.multi_loss_weight = multi_loss_weight
        self.projection_dim = projection_dim
        self.cond_temperature = cond_temperature
        self.multi_temperature = multi_temperature
        self.hidden_size = hidden_size
        self.embedding_size = embedding_size
        self.attention_size = attention_size
        self.decoder_dropout = decoder_dropout
        self.vocab_size = vocab_size
        self.prepend_bos = prepend_bos
        self.initializer_range = initializer_range
        if not __name__.startswith("transformers_modules"):
            # Installed (not loaded as code saved beside a checkpoint): soli_hf registers its own pipeline, and a
            # saved entry would make `pipeline(...)` demand trust_remote_code.
            kwargs.pop("custom_pipelines", None)
        if decoder_type == "lstm":  # SOLI's word-level tokenizer: <pad>=0, <bos>=1, <eos>=2
            token_ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
        else:
            names = ("pad_token_id", "bos_token_id", "eos_token_id")
            token_ids = {name: getattr(self.text_config, name, None) for name in names}
        for name, value in token_ids.items():
            kwargs.setdefault(name, value)
        if decoder_type == "lstm":
            kwargs.setdefault("decoder_start_token_id", kwargs["bos_token_id"])
        # The LSTM decoder generates through transformers' encoder-decoder path (the region tokens are its
        # "encoder output"); the language model generates with its own `generate`.
        kwargs["is_encoder_decoder"] = decoder_type == "lstm"
        kwargs["tie_word_embeddings"] = False  # the language model ties its own embeddings (text_config)
        super().__init__(**kwargs)

    @property
    def num_tags(self) -> int:
        """The size of the tag vocabulary (`len(tag_words)`)."""
        return len(self.tag_words)

    @property
    def num_object_classes(self) -> int:
        """The dense encoder's segmentation classes (21 Pascal VOC classes, background included)."""
        return self.dense_encoder_config.num_labels

    def to_dict(self) -> dict[str, Any]:
        """Serialise, always naming the pipeline saved beside the weights for `trust_remote_code` users."""
        output = super().to_dict()
        output["custom_pipelines"] = REMOTE_CUSTOM_PIPELINES
        return output
