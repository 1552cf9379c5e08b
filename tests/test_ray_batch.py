"""Captioning an archive on Ray Data (`soli_hf.batch.caption_archive`, `soli caption --ray`), on a local Ray started
here with 2 CPUs: the captions equal the single-process path's, unreadable photos are error rows, a rerun after
lost or killed work writes each path exactly once, and every kind of input resolves to the same paths."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest
from conftest import image_sensitive_tiny_model, truncate
from PIL import Image

from soli_hf.batch import archive_paths, caption_archive, read_archive_results
from soli_hf.batch.archive import PART_PREFIX, TEMPORARY_MARK, part_files
from soli_hf.captioner import load_captioner
from soli_hf.cli import main

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'soli-hf[scale]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'soli-hf[scale]')")

PHOTOS = 240
CORRUPT = ("truncated.jpg", "text.png", "empty.jpg")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for this module's runs, shut down after them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """`PHOTOS` small noisy photos of varied sizes (PNG and JPEG, some grey) and the `CORRUPT` files."""
    folder = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    for index in range(PHOTOS):
        height, width = rng.integers(12, 160, 2)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L" if index % 7 == 0 else "RGB")
        image.save(folder / f"photo{index:03d}.{'png' if index % 2 else 'jpg'}")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / CORRUPT[0])
    truncate(folder / CORRUPT[0])
    (folder / CORRUPT[1]).write_text("not an image")
    (folder / CORRUPT[2]).write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def model_folder(saved_image_sensitive_model) -> Path:
    """A tiny SOLI whose captions depend on the image, saved with its processor (conftest's)."""
    return saved_image_sensitive_model


def single_process_captions(paths: list[str], **loading: object) -> dict[str, str]:
    """The readable photos' captions by `Captioner.caption` in this process, in one batch."""
    readable = [path for path in paths if Path(path).name not in CORRUPT]
    return dict(zip(readable, load_captioner(**loading).caption(readable), strict=True))


def assert_rows_match(rows: list[dict], expected: dict[str, str], corrupt: set[str]) -> None:
    """One row per path; captions as expected; the corrupt files are error rows with an empty caption."""
    counts = Counter(row["path"] for row in rows)
    assert set(counts) == set(expected) | corrupt and set(counts.values()) == {1}
    for row in rows:
        if row["path"] in corrupt:
            assert row["caption"] == "" and row["error"], row
        else:
            assert row["error"] is None and row["caption"] == expected[row["path"]], row


def test_captions_equal_the_single_process_path_and_a_rerun_writes_only_what_is_missing(
    local_ray, archive, model_folder
) -> None:
    out = archive.parent / "out_resume"
    run = caption_archive([str(archive)], out, model=str(model_folder), workers=2, batch_size=8)
    paths = sorted(str(path) for path in archive.iterdir())
    corrupt = {str(archive / name) for name in CORRUPT}
    assert (run.total, run.already_done, run.captioned, run.errors, run.workers) == (PHOTOS + 3, 0, PHOTOS, 3, 2)
    assert run.parts == len(part_files(out)) > 4  # several blocks: both workers had work
    expected = single_process_captions(paths, model=str(model_folder))
    assert len(set(expected.values())) > 10  # the captions do depend on the photo
    assert_rows_match(read_archive_results(out).to_pylist(), expected, corrupt)

    # An interrupted run: a third of the parts never written, one left half-written under its temporary name.
    lost = part_files(out)[::3]
    lost_paths = {path for part in lost for path in pyarrow.parquet.read_table(part).column("path").to_pylist()}
    for part in lost:
        part.unlink()
    half_written = out / f".{PART_PREFIX}killed-00000.parquet{TEMPORARY_MARK}123"
    half_written.write_bytes(b"PAR1 cut off")
    rerun = caption_archive([str(archive)], out, model=str(model_folder), workers=2, batch_size=8)
    assert rerun.already_done == PHOTOS + 3 - len(lost_paths)
    assert rerun.captioned + rerun.errors == len(lost_paths) and not half_written.exists()
    assert_rows_match(read_archive_results(out).to_pylist(), expected, corrupt)

    done = caption_archive([str(archive)], out, model=str(model_folder), workers=2)
    assert (done.already_done, done.captioned, done.parts, done.workers) == (PHOTOS + 3, 0, 0, 0)


def test_soli_caption_ray_on_a_csv_column_of_relative_paths(local_ray, archive, model_folder, capsys) -> None:
    names = [f"photo{index:03d}.{'png' if index % 2 else 'jpg'}" for index in range(0, PHOTOS, 10)] + [CORRUPT[1]]
    table = archive / "subset.csv"
    table.write_text("name,file\n" + "".join(f"n{i},{name}\n" for i, name in enumerate(names)))
    out = archive.parent / "out_cli"
    flags = ["--out", str(out), "--model", str(model_folder), "--column", "file", "--workers", "1"]
    assert main(["caption", "--ray", str(table), *flags]) == 1  # an unreadable photo: exit code 1
    assert f"{len(names) - 1} captioned and 1 unreadable (error rows) by 1 worker(s)" in capsys.readouterr().err
    paths = [str(archive / name) for name in names]
    rows = read_archive_results(out).to_pylist()
    assert_rows_match(rows, single_process_captions(paths, model=str(model_folder)), {str(archive / CORRUPT[1])})
    assert main(["caption", "--ray", str(table), *flags]) == 0
    assert f"{len(names)} of the {len(names)} photos were there already" in capsys.readouterr().err


def test_every_input_kind_gives_the_same_absolute_paths(archive, tmp_path, monkeypatch) -> None:
    photos = sorted(str(path) for path in archive.glob("photo00*"))
    relative = [os.path.relpath(path, tmp_path) for path in photos]
    (tmp_path / "list.txt").write_text("# photos\n\n" + "\n".join(relative + relative[:2]) + "\n")
    table = pa.table({"id": list(range(len(photos))), "image": relative})
    pyarrow.parquet.write_table(table, tmp_path / "paths.parquet")
    (tmp_path / "paths.csv").write_text("path\n" + "\n".join(photos) + "\n")
    monkeypatch.chdir(archive.parent)
    assert archive_paths([str(archive / "photo00*")]) == photos  # a glob
    assert archive_paths([os.path.relpath(photos[0]), photos[0]]) == photos[:1]  # relative and absolute: one path
    assert archive_paths([tmp_path / "list.txt"]) == photos  # relative to the list's folder, each once
    assert archive_paths([tmp_path / "paths.parquet"], column="image") == photos
    assert archive_paths([tmp_path / "paths.csv"]) == photos
    assert len(archive_paths([archive])) == PHOTOS + len(CORRUPT)  # a folder's image files
    with pytest.raises(ValueError, match=r"no column 'path'; its columns: \['id', 'image'\]"):
        archive_paths([tmp_path / "paths.parquet"])
    with pytest.raises(ValueError, match="applies to a Parquet or CSV table"):
        archive_paths([archive], column="image")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt: no paths in it"):
        archive_paths([tmp_path / "empty.txt"])
    with pytest.raises(ValueError, match="no such file or folder"):
        archive_paths([tmp_path / "missing"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray"], "give it with --out DIR"),
        (["--ray", "--out", "o", "--json", "--html", "p.html"], "--html, --json apply to a run in one process"),
        (["--out", "o", "--workers", "2"], "--out, --workers apply to a run on Ray (--ray)"),
    ],
)
def test_soli_caption_ray_usage_errors(archive, flags, message, capsys) -> None:
    assert main(["caption", str(archive), *flags]) == 2
    assert message in capsys.readouterr().err


def test_without_ray_the_error_names_the_extra(archive, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["caption", "--ray", str(archive), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'soli-hf[scale]'" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_workers_give_the_single_process_captions(local_ray, archive, tokenizer, processor, tmp_path) -> None:
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export(dynamo=True) needs it)")
    from soli_hf.onnx.export import export_onnx

    onnx = tmp_path / "onnx"
    export_onnx(image_sensitive_tiny_model(tokenizer, "both"), onnx, processor=processor, backend="torch")
    run = caption_archive([str(archive / "*.png")], tmp_path / "out", onnx=onnx, workers=2, batch_size=16)
    paths = [str(path) for path in sorted(archive.glob("*.png"))]
    assert (run.captioned, run.errors) == (len(paths) - 1, 1)
    expected = single_process_captions(paths, onnx=onnx, num_threads=1)
    assert_rows_match(read_archive_results(tmp_path / "out").to_pylist(), expected, {str(archive / CORRUPT[1])})


@pytest.mark.slow
def test_a_killed_run_then_restarted_writes_each_path_exactly_once(local_ray, archive, model_folder, tmp_path) -> None:
    """`soli caption --ray` in a process of its own, on this module's Ray, killed (SIGKILL) once its first parts are
    written; the same command again completes the output."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "soli_hf.cli", "caption", "--ray", str(archive), "--out", str(out)]
    command += ["--model", str(model_folder), "--workers", "2", "--batch-size", "2"]
    env = {**os.environ, "RAY_ADDRESS": local_ray.get_runtime_context().gcs_address, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(part_files(out)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = len(read_archive_results(out))
    assert 0 < written < PHOTOS + len(CORRUPT), "the run was not stopped half way"
    assert main(["caption", "--ray", str(archive), "--out", str(out), "--model", str(model_folder)]) in (0, 1)
    counts = Counter(read_archive_results(out).column("path").to_pylist())
    assert len(counts) == PHOTOS + len(CORRUPT) and set(counts.values()) == {1}
