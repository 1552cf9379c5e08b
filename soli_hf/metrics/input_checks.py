"""Input checks for the caption metrics: every error names the offending image id."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["validate_captions", "validate_references"]

_SHOWN = 5


def _some(ids: Sequence[Hashable]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:_SHOWN])
    return shown + (f" (and {len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


def validate_references(references: Mapping[Hashable, Any]) -> None:
    """Check ``references: {id: [str, ...]}``.

    Raises:
        ValueError: not a dict, no ids, an id without references, or a reference
            that is not a string (the message names the id).
    """
    if not isinstance(references, Mapping):
        raise ValueError("references must be a dict keyed by image id")
    if not references:
        raise ValueError("no captions to score: references are empty")
    for image_id, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise ValueError(f"references for id {image_id!r} must be a list of str, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references for id {image_id!r} are empty (at least one is needed)")
        for k, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"reference {k} for id {image_id!r} must be a str, got {type(ref).__name__}")


def validate_captions(predictions: Mapping[Hashable, Any], references: Mapping[Hashable, Any]) -> None:
    """Check ``predictions: {id: str}`` against ``references: {id: [str, ...]}``.

    Raises:
        ValueError: the id sets differ, there are no ids, an id has no references,
            or a caption is not a string.  The message names the id(s).
    """
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise ValueError("predictions and references must be dicts keyed by image id")
    missing = [i for i in predictions if i not in references]
    if missing:
        raise ValueError(f"no references for prediction id(s) {_some(missing)}")
    extra = [i for i in references if i not in predictions]
    if extra:
        raise ValueError(f"no prediction for reference id(s) {_some(extra)}")
    validate_references(references)
    for image_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise ValueError(f"prediction for id {image_id!r} must be a str, got {type(caption).__name__}")
