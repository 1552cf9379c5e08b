"""SOLI's word-level tokenizer: a `tokenizers` WordLevel model wrapped in `PreTrainedTokenizerFast`.

Captions are lower-cased and stripped of punctuation; each word seen at least `min_frequency` times in the
training captions gets an id, others become `<unk>`. Encoding adds `<bos>` and `<eos>`.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]  # ids 0, 1, 2, 3
DEFAULT_MAX_CAPTION_TOKENS = 32


def _caption_normalizer() -> normalizers.Normalizer:
    """NFKC, lower case, every non-word character (punctuation) becomes a space."""
    return normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]|_"), " ")]
    )


def build_tokenizer(
    captions: Iterable[str],
    min_frequency: int = 5,
    max_vocab_size: int | None = None,
    model_max_length: int = DEFAULT_MAX_CAPTION_TOKENS,
) -> PreTrainedTokenizerFast:
    """Build the word-level caption tokenizer from any iterable of captions.

    Args:
        captions: training captions (raw text; normalisation happens inside the tokenizer).
        min_frequency: words seen fewer times become `<unk>`.
        max_vocab_size: optional cap on the vocabulary size, special tokens included.
        model_max_length: longest tokenised caption (with `<bos>`/`<eos>`) kept when truncating.

    Returns:
        A `PreTrainedTokenizerFast` with specials `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3.
    """
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = _caption_normalizer()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer_kwargs = {"min_frequency": min_frequency, "special_tokens": SPECIAL_TOKENS}
    if max_vocab_size is not None:
        trainer_kwargs["vocab_size"] = max_vocab_size
    tokenizer.train_from_iterator(_checked_captions(captions), trainer=trainers.WordLevelTrainer(**trainer_kwargs))
    if tokenizer.get_vocab_size() <= len(SPECIAL_TOKENS):
        raise ValueError(f"no word occurs at least {min_frequency} times in the captions: the vocabulary is empty")
    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
    )


def _checked_captions(captions: Iterable[str]) -> Iterable[str]:
    """Yield the captions, raising `ValueError` with the row number of any caption that is not a string."""
    for row, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(f"caption {row}: expected a string, got {type(caption).__name__}")
        yield caption
