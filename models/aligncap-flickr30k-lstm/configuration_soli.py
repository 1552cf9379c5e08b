"""Configuration of SOLI, the low-resolution image captioner (see DESIGN.md, "The method")."""

from __future__ import annotations

from typing import Any

from transformers import MobileNetV2Config, PretrainedConfig

INFERENCE_BRANCHES = ("both", "lr")
BRANCH_B_INPUTS = ("super_resolved", "bicubic")

# The image-to-text pipeline shipped beside the weights, for processes that load a saved
# folder with `trust_remote_code=True` and cannot import soli_hf (see `SoliConfig.to_dict`).
_REMOTE_PIPELINE = {
    "impl": "pipeline_soli.SoliImageTextToTextPipeline",
    "pt": ["AutoModelForImageTextToText"],
    "type": "multimodal",
}
REMOTE_CUSTOM_PIPELINES = {"image-to-text": _REMOTE_PIPELINE, "image-text-to-text": _REMOTE_PIPELINE}


def default_backbone_config() -> MobileNetV2Config:
    """MobileNetV2 1.0 with output stride 16, so a 64x64 input still gives a 4x4 feature grid."""
    return MobileNetV2Config(output_stride=16)


class SoliConfig(PretrainedConfig):
    r"""
    Configuration of a [`SoliForConditionalGeneration`] captioner.

    Args:
        backbone_config (`MobileNetV2Config` or `dict`, *optional*):
            The shared (siamese) image encoder. Defaults to MobileNetV2 1.0 with `output_stride=16`.
        image_size (`int`, *optional*, defaults to 64):
            Side of the low-resolution (LR) input the model sees.
        sr_scale (`int`, *optional*, defaults to 2):
            Upscaling factor of the sub-pixel super-resolution module; the SR branch sees
            `image_size * sr_scale` pixels.
        sr_hidden_channels (`int`, *optional*, defaults to 32):
            Width of the super-resolution CNN.
        grid_size (`int`, *optional*, defaults to 4):
            Both branches' feature maps are average-pooled to `grid_size x grid_size` before being merged.
        hidden_size (`int`, *optional*, defaults to 512):
            Width of the attention memory and of the LSTM state.
        embedding_size (`int`, *optional*, defaults to 256):
            Width of the word embeddings.
        attention_size (`int`, *optional*, defaults to 256):
            Width of the additive-attention space.
        decoder_dropout (`float`, *optional*, defaults to 0.3):
            Dropout before the output layer of the decoder.
        projection_dim (`int`, *optional*, defaults to 128):
            Output width of the contrastive projection head.
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the symmetric InfoNCE loss between the LR and SR branches.
        contrastive_weight (`float`, *optional*, defaults to 0.1):
            Weight of the contrastive loss in the total loss.
        sr_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the L1 super-resolution loss in the total loss (used when `hr_pixel_values` is given).
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the caption cross-entropy.
        distillation_weight (`float`, *optional*, defaults to 0.0):
            Weight of the high-resolution teacher distillation loss: each branch's pooled backbone grid (before the
            projection to `hidden_size`) is pulled towards a frozen teacher's grid of the full-resolution photo
            (`teacher_features` in `forward`), as the mean over grid cells of 1 - cosine similarity. 0 turns it off
            (no teacher input needed).
        num_tags (`int`, *optional*, defaults to 0):
            Size of the semantic tag vocabulary (the most frequent content words of the training captions): a
            multi-label head on the pooled image memory predicts which of them an image's references contain,
            trained with binary cross-entropy against `tag_labels`. 0 turns tags off (no head).
        tag_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the tag loss in the total loss (used when `num_tags > 0` and `tag_labels` is given).
        tag_words (`list[str]`, *optional*):
            The `num_tags` words the tag head predicts, in order, saved with the model so that it knows its tags.
        tags_in_memory (`bool`, *optional*, defaults to `False`):
            Append one token to the decoder's attention memory: the mean of a learned tag-embedding table weighted
            by the predicted tag probabilities. The tag head then runs at inference too; with `False` it is a
            training-only head, like the contrastive head.
        use_sr_branch (`bool`, *optional*, defaults to `True`):
            `True` is SOLI. `False` is the baseline captioner of the same recipe: the LR branch alone, with no
            super-resolution module, no contrastive head and no SR or contrastive loss (`inference_branches` must
            then be `"lr"`), so that SOLI's gain can be measured.
        branch_b_input (`str`, *optional*, defaults to `"super_resolved"`):
            What branch B encodes (only with `use_sr_branch=True`). `"super_resolved"` is SOLI: the SR module's
            output (blended with the bicubic upsample by `curriculum_alpha` during training). `"bicubic"` is an
            ablation: branch B always encodes the plain bicubic `sr_scale`x upsample of the LR input, in training
            and at inference; the model has no SR module (no SR weights, no SR loss), keeps the contrastive loss
            between the two branches, and ignores `curriculum_alpha`.
        lr_branch_upsample (`int`, *optional*, defaults to 1):
            The LR branch encodes the LR input bicubic-upsampled by this factor (1: the LR image itself). Values
            above 1 are an ablation of the baseline (`use_sr_branch=False`): one branch on a finer grid, with no SR
            module and no contrastive loss.
        lr_only_probability (`float`, *optional*, defaults to 0.0):
            During training, the probability that an image's attention memory is its LR grid alone (what
            `inference_branches="lr"` decodes from) instead of the average of both grids, so that the decoder also
            learns the half-cost mode; the contrastive and SR losses still see both branches. 0 turns it off; it has
            no effect at inference or without the SR branch.
        inference_branches (`str`, *optional*, defaults to `"both"`, or `"lr"` without the SR branch):
            `"both"` encodes the LR and SR branches and averages them (the paper); `"lr"` encodes the LR branch
            only, halving the encoder cost. Training always uses every branch the model has.
        freeze_backbone_batch_norm (`bool`, *optional*, defaults to `True`):
            Keep the backbone's batch-norm layers in eval mode (ImageNet running statistics) during training;
            their affine parameters still train.
        vocab_size (`int`, *optional*, defaults to 10000):
            Size of the word-level vocabulary.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear and embedding weights.
    """

    model_type = "soli"
    sub_configs = {"backbone_config": MobileNetV2Config}

    def __init__(
        self,
        backbone_config: MobileNetV2Config | dict[str, Any] | None = None,
        image_size: int = 64,
        sr_scale: int = 2,
        sr_hidden_channels: int = 32,
        grid_size: int = 4,
        hidden_size: int = 512,
        embedding_size: int = 256,
        attention_size: int = 256,
        decoder_dropout: float = 0.3,
        projection_dim: int = 128,
        contrastive_temperature: float = 0.1,
        contrastive_weight: float = 0.1,
        sr_loss_weight: float = 1.0,
        label_smoothing: float = 0.0,
        distillation_weight: float = 0.0,
        num_tags: int = 0,
        tag_loss_weight: float = 1.0,
        tag_words: list[str] | None = None,
        tags_in_memory: bool = False,
        use_sr_branch: bool = True,
        branch_b_input: str = "super_resolved",
        lr_branch_upsample: int = 1,
        lr_only_probability: float = 0.0,
        inference_branches: str | None = None,
        freeze_backbone_batch_norm: bool = True,
        vocab_size: int = 10000,
        initializer_range: float = 0.02,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int | None = None,
        is_encoder_decoder: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(backbone_config, dict):
            backbone_config = MobileNetV2Config(**{k: v for k, v in backbone_config.items() if k != "model_type"})
        self.backbone_config = backbone_config if backbone_config is not None else default_backbone_config()
        if inference_branches is None:
            inference_branches = "both" if use_sr_branch else "lr"
        if inference_branches not in INFERENCE_BRANCHES:
            raise ValueError(f"inference_branches must be one of {INFERENCE_BRANCHES}, got {inference_branches!r}")
        if not use_sr_branch and inference_branches != "lr":
            raise ValueError("a model without the SR branch (use_sr_branch=False) can only use inference_branches='lr'")
        if branch_b_input not in BRANCH_B_INPUTS:
            raise ValueError(f"branch_b_input must be one of {BRANCH_B_INPUTS}, got {branch_b_input!r}")
        if branch_b_input != "super_resolved" and not use_sr_branch:
            raise ValueError(
                f"branch_b_input={branch_b_input!r} needs branch B (use_sr_branch=True); a model without it "
                "(use_sr_branch=False) has only the LR branch"
            )
        if isinstance(lr_branch_upsample, bool) or not isinstance(lr_branch_upsample, int) or lr_branch_upsample < 1:
            raise ValueError(
                f"lr_branch_upsample must be a positive integer (1: no upsampling), got {lr_branch_upsample!r}"
            )
        if lr_branch_upsample > 1 and use_sr_branch:
            raise ValueError(
                f"lr_branch_upsample={lr_branch_upsample} needs use_sr_branch=False: it is the single-branch ablation "
                "(the LR branch on a finer grid); with both branches the LR branch must see the LR image itself"
            )
        if not 0.0 <= lr_only_probability <= 1.0:
            raise ValueError(f"lr_only_probability must be in [0, 1] (0: off), got {lr_only_probability!r}")
        if sr_scale < 1:
            raise ValueError(f"sr_scale must be a positive integer, got {sr_scale!r}")
        if num_tags < 0:
            raise ValueError(f"num_tags must be >= 0 (0: no tags), got {num_tags!r}")
        tag_words = list(tag_words) if tag_words is not None else []
        if tag_words and len(tag_words) != num_tags:
            raise ValueError(f"tag_words must hold num_tags={num_tags} words, got {len(tag_words)}")
        if tags_in_memory and num_tags < 1:
            raise ValueError("tags_in_memory needs a tag head: set num_tags > 0")
        self.image_size = image_size
        self.sr_scale = sr_scale
        self.sr_hidden_channels = sr_hidden_channels
        self.grid_size = grid_size
        self.hidden_size = hidden_size
        self.embedding_size = embedding_size
        self.attention_size = attention_size
        self.decoder_dropout = decoder_dropout
        self.projection_dim = projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_weight = contrastive_weight
        self.sr_loss_weight = sr_loss_weight
        self.label_smoothing = label_smoothing
        self.distillation_weight = distillation_weight
        self.num_tags = num_tags
        self.tag_loss_weight = tag_loss_weight
        self.tag_words = tag_words
        self.tags_in_memory = tags_in_memory
        self.use_sr_branch = use_sr_branch
        self.branch_b_input = branch_b_input
        self.lr_branch_upsample = lr_branch_upsample
        self.lr_only_probability = lr_only_probability
        self.inference_branches = inference_branches
        self.freeze_backbone_batch_norm = freeze_backbone_batch_norm
        self.vocab_size = vocab_size
        self.initializer_range = initializer_range
        if not _loaded_as_remote_code():
            # The installed soli_hf registers its own pipeline; keeping the saved entry would make
            # `pipeline(...)` demand trust_remote_code for a model whose code is installed.
            kwargs.pop("custom_pipelines", None)
        # The output layer (hidden_size wide) is not the word embedding (embedding_size wide): never tie them
        # (transformers 4.x ties by default).
        kwargs["tie_word_embeddings"] = False
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=bos_token_id if decoder_start_token_id is None else decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        """Serialise, always naming the pipeline saved beside the weights for `trust_remote_code` users."""
        output = super().to_dict()
        output["custom_pipelines"] = REMOTE_CUSTOM_PIPELINES
        return output


def _loaded_as_remote_code() -> bool:
    """True when this file runs as code saved beside a checkpoint (transformers' dynamic modules)."""
    return __name__.startswith("transformers_modules")
