"""`soli caption` with bad input: one bad file never loses the run, results are written as they are made, a killed
run continues where it stopped, and bad arguments or a damaged model are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import soli_hf.cli.caption
from soli_hf.captioner import load_captioner
from soli_hf.cli import main
from soli_hf.cli.caption import ResultsFile, caption_files

ROOT = Path(__file__).resolve().parents[1]


def write_photos(folder: Path, count: int, size: tuple[int, int] = (48, 64)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    paths = [folder / f"photo{index:02d}.png" for index in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return paths


def caption_args(saved_tiny_model: Path, *args: str) -> list[str]:
    return ["caption", *args, "--model", str(saved_tiny_model), "--max-new-tokens", "3", "--num-beams", "1"]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# --- one bad file is a named skip, never the end of the run ------------------------------------------------------


def test_every_kind_of_bad_file_is_skipped_by_name_and_the_others_captioned(
    saved_tiny_model: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    folder = tmp_path / "photos"
    good = write_photos(folder, 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("L", (300, 300)).save(folder / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # bomb.png has more than twice that many pixels
    nan = np.full((20, 20), 0.5, dtype=np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(folder / "nan.tif")
    os.mkfifo(folder / "x.jpg")  # opening it would hang the run
    (folder / "album.jpg").mkdir()  # a folder is no image: not listed
    code = main(caption_args(saved_tiny_model, str(folder), "--json", "--batch-size", "2"))
    captured = capsys.readouterr()
    assert code == 1
    assert [record["path"] for record in json_lines(captured.out)] == [str(path) for path in good]
    reasons = {
        "broken.jpg": "not an image file PIL can read",
        "bomb.png": "too many pixels to decode safely",
        "nan.tif": "image contains NaN or infinite values",
        "x.jpg": "not a regular file (a FIFO), not opened",
    }
    skips = [line for line in captured.err.splitlines() if line.endswith(", skipped")]
    assert len(skips) == len(reasons)
    for name, reason in reasons.items():
        assert any(line.startswith(f"soli caption: {folder / name}: {reason}") for line in skips), name
    assert "Traceback" not in captured.err


def test_a_fifo_named_on_the_command_line_is_skipped(saved_tiny_model: Path, tmp_path: Path, capsys) -> None:
    good = write_photos(tmp_path, 1)[0]
    os.mkfifo(tmp_path / "x.jpg")
    assert main(caption_args(saved_tiny_model, str(tmp_path / "x.jpg"), str(good))) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}\t")
    assert f"soli caption: {tmp_path / 'x.jpg'}: not a regular file (a FIFO), not opened, skipped" in captured.err


def test_values_outside_a_files_pixel_range_are_a_one_line_warning(saved_tiny_model, tmp_path, capsys) -> None:
    path = tmp_path / "levels.tif"
    Image.fromarray(np.full((20, 20), 200.0, dtype=np.float32)).save(path)  # mode F holds 0..1
    assert main(caption_args(saved_tiny_model, str(path))) == 0
    err = capsys.readouterr().err
    assert f"soli caption: warning: {path}: values 200..200 fall outside 0..1 (the range of PIL mode F); clipped" in err


@pytest.mark.slow  # exports the tiny model (half a minute on a busy CPU)
def test_onnx_captioner_skips_the_same_files_and_gives_the_same_captions(
    saved_tiny_model: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from soli_hf.onnx.export import export_onnx

    export_onnx(saved_tiny_model, tmp_path / "onnx")
    folder = tmp_path / "photos"
    write_photos(folder, 2)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(caption_args(saved_tiny_model, str(folder), "--json")) == 1
    expected = capsys.readouterr()
    onnx_args = ["caption", str(folder), "--onnx", str(tmp_path / "onnx"), "--max-new-tokens", "3", "--num-beams", "1"]
    assert main([*onnx_args, "--json"]) == 1
    captured = capsys.readouterr()
    assert json_lines(captured.out) == json_lines(expected.out)
    assert f"soli caption: {folder / 'broken.jpg'}: not an image file PIL can read, skipped" in captured.err


# --- results are written as they are made ------------------------------------------------------------------------


def test_results_are_streamed_and_the_page_keeps_what_was_made_when_stopped(
    saved_tiny_model: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    paths = write_photos(tmp_path / "photos", 4)

    def stopped_at_the_third_batch(*args, **kwargs):
        captioner = load_captioner(*args, **kwargs)
        caption_pixels, calls = captioner.caption_pixels, []

        def caption(pixels, **decoding):
            calls.append(len(pixels))
            if len(calls) == 3:
                raise KeyboardInterrupt
            return caption_pixels(pixels, **decoding)

        captioner.caption_pixels = caption
        return captioner

    monkeypatch.setattr(soli_hf.cli.caption, "load_captioner", stopped_at_the_third_batch)
    page = tmp_path / "page.html"
    with pytest.raises(KeyboardInterrupt):
        main(caption_args(saved_tiny_model, str(tmp_path / "photos"), "--batch-size", "1", "--html", str(page)))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(path) for path in paths[:2]]
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 2 and html.endswith("</html>\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["page.html", "photos"]  # no temporary file left


def test_a_batch_holds_only_the_small_lr_inputs(saved_tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    Image.new("RGB", (3000, 2000), (120, 30, 200)).save(path)
    captioner = load_captioner(saved_tiny_model)
    caption_pixels, batches = captioner.caption_pixels, []

    def caption(pixels: np.ndarray, **decoding) -> list[str]:
        batches.append((pixels.shape, pixels.dtype))
        return caption_pixels(pixels, **decoding)

    captioner.caption_pixels = caption
    results = list(caption_files(captioner, [path, path, path], batch_size=2, num_beams=1, max_new_tokens=2))
    assert batches == [((2, 3, 64, 64), np.float32), ((1, 3, 64, 64), np.float32)]
    assert [result.lr_image.size for result in results] == [(64, 64)] * 3


# --- --output: appended per image, a killed run continues -------------------------------------------------------


def test_output_file_skips_what_it_holds_and_drops_a_cut_last_line(
    saved_tiny_model: Path, tmp_path: Path, capsys
) -> None:
    write_photos(tmp_path / "photos", 3)
    args = caption_args(saved_tiny_model, str(tmp_path / "photos"), "--json")
    assert main(args) == 0
    clean = json_lines(capsys.readouterr().out)
    output = tmp_path / "out.jsonl"
    first_two = "".join(json.dumps(record) + "\n" for record in clean[:2])
    output.write_text(first_two + json.dumps(clean[2])[:25])  # killed while writing the third line
    assert main([*args, "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"soli caption: {output}: dropped its last line, cut off when a run was killed" in captured.err
    assert f"soli caption: {output} already holds 2 of the 3 images, skipping them; 1 left to caption" in captured.err
    assert json_lines(output.read_text()) == clean
    assert main([*args, "--output", str(output)]) == 0  # nothing left: nothing appended
    assert json_lines(output.read_text()) == clean


def test_output_file_in_tsv(saved_tiny_model: Path, tmp_path: Path, capsys) -> None:
    paths = write_photos(tmp_path / "photos", 2)
    output = tmp_path / "out.tsv"
    assert main([*caption_args(saved_tiny_model, str(tmp_path / "photos")), "--output", str(output)]) == 0
    assert [line.split("\t")[0] for line in output.read_text().splitlines()] == [str(path) for path in paths]
    assert ResultsFile.open(output, as_json=False).done == {str(path) for path in paths}


def test_an_output_file_that_is_not_results_is_refused(saved_tiny_model: Path, tmp_path: Path, capsys) -> None:
    write_photos(tmp_path / "photos", 1)
    output = tmp_path / "notes.txt"
    output.write_text("my notes\n")
    assert main([*caption_args(saved_tiny_model, str(tmp_path / "photos"), "--json"), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert f'{output} line 1: not a result line (a JSON object with "path" and "caption")' in err
    assert output.read_text() == "my notes\n"


def caption_command(model: Path, photos: Path) -> list[str]:
    """`soli caption` of the photos, one per batch, 4 tokens each: many small steps for a subprocess test."""
    options = "--batch-size 1 --max-new-tokens 4".split()
    return [sys.executable, "-m", "soli_hf.cli", "caption", str(photos), "--model", str(model), *options]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_loses_nothing_and_the_next_run_finishes_it(
    saved_tiny_model: Path, tmp_path: Path
) -> None:
    write_photos(tmp_path / "photos", 40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [*caption_command(saved_tiny_model, tmp_path / "photos"), "--json"]
    output, clean = tmp_path / "out.jsonl", tmp_path / "clean.jsonl"
    killed = subprocess.Popen([*command, "--output", str(output)], env=env, stderr=subprocess.DEVNULL, cwd=ROOT)
    reference = subprocess.Popen([*command, "--output", str(clean)], env=env, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 120
    while killed.poll() is None and time.monotonic() < deadline:
        if output.exists() and output.read_bytes().count(b"\n") >= 3:
            killed.kill()  # SIGKILL: no clean-up of any kind
            break
        time.sleep(0.005)
    killed.wait()
    assert killed.returncode == -9, "the run ended before it could be killed"
    written = output.read_text().splitlines()
    assert 3 <= len(written) < 40
    assert all(json.loads(line)["caption"] is not None for line in written)  # each line is written in one piece
    resumed = subprocess.run([*command, "--output", str(output)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"already holds {len(written)} of the 40 images" in resumed.stderr
    assert reference.wait(timeout=120) == 0
    records, expected = json_lines(output.read_text()), json_lines(clean.read_text())
    assert len(records) == 40 and len({record["path"] for record in records}) == 40  # each path exactly once
    assert {r["path"]: r["caption"] for r in records} == {r["path"]: r["caption"] for r in expected}


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_run_quietly(saved_tiny_model: Path, tmp_path: Path) -> None:
    """`soli caption ... | head -n 2`: no BrokenPipeError traceback once head has its lines."""
    write_photos(tmp_path / "photos", 40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = caption_command(saved_tiny_model, tmp_path / "photos")
    caption = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    first_lines = [caption.stdout.readline() for _ in range(2)]
    caption.stdout.close()  # the reader leaves, as `head` does
    stderr = caption.stderr.read().decode()
    assert caption.wait(timeout=120) == 1
    assert all(line.count(b"\t") == 1 for line in first_lines)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr[-2000:]


# --- arguments and the model folder ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        ("caption", "--batch-size", "-1"),
        ("caption", "--batch-size", "0"),
        ("caption", "--num-beams", "0"),
        ("caption", "--max-new-tokens", "0"),
        ("caption", "--num-threads", "0"),
        ("caption", "--batch-size", "two"),
        ("evaluate", "--batch-size", "0"),
        ("evaluate", "--num-beams", "0"),
        ("evaluate", "--max-new-tokens", "0"),
        ("evaluate", "--max-images", "0"),
        ("export", "--opset", "0"),
    ],
)
def test_integer_flags_below_one_are_usage_errors(command: str, flag: str, value: str, capsys) -> None:
    required = {
        "caption": ["photo.jpg"],
        "evaluate": ["--model", "m", "--data", "d", "--out", "o"],
        "export": ["--model", "m", "--out", "o"],
    }[command]
    with pytest.raises(SystemExit) as exited:
        main([command, *required, f"{flag}={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"soli {command}: error: argument {flag}: expected a positive integer")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_weights_are_a_one_line_error_naming_the_file(
    saved_tiny_model: Path, tmp_path: Path, capsys, damage: str
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny_model, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not safetensors")
    photo = write_photos(tmp_path / "photos", 1)[0]
    assert main(["caption", str(photo), "--model", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = [line for line in captured.err.splitlines() if line.startswith("soli caption: error:")]
    assert len(error) == 1 and "Traceback" not in captured.err
    assert error[0].startswith(f"soli caption: error: {weights}: cannot read the weights, the file is truncated or")
