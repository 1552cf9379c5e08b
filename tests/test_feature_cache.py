"""The frozen-feature cache shared by the teacher and region features: computed part by part, a killed computation
resumes at its first unfinished part with the same result, a changed key starts over, and the parts folder is gone
once the cache folder is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from soli_hf.training.feature_cache import PARTS_SUFFIX, load_or_compute_features, row_parts


class Interrupted(Exception):
    """Stands for a kill in the middle of the computation."""


def row_features(rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """Features that name their row: row r holds [r, r + 0.5], and `odd` only on parts starting at an odd row."""
    values = torch.tensor([[row, row + 0.5] for row in rows], dtype=torch.float16)
    return {"values": values} | ({"odd": values[:, :1].clone()} if rows[0] % 2 else {})


def test_a_killed_computation_resumes_at_its_first_unfinished_part(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "regions-0123"
    key = {"version": 1, "images": "abc"}
    parts = row_parts(10, 3)
    assert [list(part) for part in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    computed: list[list[int]] = []

    def killed_at_third_part(rows: Sequence[int]) -> dict[str, torch.Tensor]:
        if len(computed) == 2:
            raise Interrupted
        computed.append(list(rows))
        return row_features(rows)

    with pytest.raises(Interrupted):
        load_or_compute_features(folder, key, killed_at_third_part, parts, kind="test", show_progress=False)
    assert not folder.exists()
    assert sorted(path.name for path in folder.with_name(folder.name + PARTS_SUFFIX).glob("part-*")) == [
        "part-00000.safetensors",
        "part-00001.safetensors",
    ]

    def counted(rows: Sequence[int]) -> dict[str, torch.Tensor]:
        computed.append(list(rows))
        return row_features(rows)

    tensors = load_or_compute_features(folder, key, counted, parts, kind="test", show_progress=False)
    assert computed == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # the two saved parts were not computed again
    torch.testing.assert_close(tensors["values"], row_features(range(10))["values"], rtol=0, atol=0)
    assert tensors["odd"][3:6, 0].tolist() == [3, 4, 5] and tensors["odd"][:3].abs().sum() == 0  # absent: zeros
    assert (folder / "features.safetensors").is_file() and not folder.with_name(folder.name + PARTS_SUFFIX).exists()

    again = load_or_compute_features(folder, key, counted, parts, kind="test", show_progress=False)
    assert len(computed) == 4  # read from the cache folder
    torch.testing.assert_close(again["values"], tensors["values"], rtol=0, atol=0)


def test_parts_saved_under_another_key_are_not_reused(tmp_path: Path) -> None:
    folder = tmp_path / "teacher-0123"
    parts = row_parts(4, 2)
    calls = []

    def killed_after_first_part(rows: Sequence[int]) -> dict[str, torch.Tensor]:
        if calls:
            raise Interrupted
        calls.append(list(rows))
        return row_features(rows)

    with pytest.raises(Interrupted):
        load_or_compute_features(folder, {"images": "old"}, killed_after_first_part, parts, kind="t")

    def counted(rows: Sequence[int]) -> dict[str, torch.Tensor]:
        calls.append(list(rows))
        return {"values": row_features(rows)["values"] * 2}

    tensors = load_or_compute_features(folder, {"images": "new"}, counted, parts, kind="t", show_progress=False)
    assert calls == [[0, 1], [0, 1], [2, 3]]  # an image changed: the saved part is stale
    assert tensors["values"][:, 0].tolist() == [0, 2, 4, 6]


def test_only_reading_a_missing_cache_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="region features cache .*not written by the main process"):
        load_or_compute_features(
            tmp_path / "regions-x", {}, row_features, row_parts(2, 2), kind="region features", compute_if_missing=False
        )
