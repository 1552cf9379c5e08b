"""Markdown tables for reports, comparisons and model cards."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are written with `str()`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def metric_cells(metrics: Mapping[str, float], keys: Sequence[str], digits: int) -> list[str]:
    """The values of `keys`, rounded to `digits`, "n/a" where a metric is absent (e.g. METEOR without Java)."""
    return [f"{metrics[key]:.{digits}f}" if key in metrics else "n/a" for key in keys]
