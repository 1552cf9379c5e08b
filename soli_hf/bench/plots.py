"""The one way the reports draw a picture: a matplotlib figure off-screen (Agg), laid out, saved and closed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def saved_figure(
    path: Path,
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float],
    dpi: int = 100,
    sharey: bool = False,
) -> Iterator[Any]:
    """`plt.subplots(nrows, ncols, figsize=..., sharey=...)`'s axes to draw on; on leaving the block the figure is
    laid out (`tight_layout`) and saved to `path` (its folder made), and always closed (no figure piles up in a long
    run).

    matplotlib is imported here, with the Agg backend (no display), so that importing a report module costs nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(nrows, ncols, figsize=figsize, sharey=sharey)
    try:
        yield axes
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi)
    finally:
        plt.close(figure)
