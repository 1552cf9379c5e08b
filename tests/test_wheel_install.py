"""The built wheel, installed alone: `soli info` and `soli caption` run from the installed package (not the
checkout), give the checkout's captions, and without `--model` outside a checkout ask for the Hub's default model,
with a one-line error saying how to get it when it is not cached and the Hub cannot be reached."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soli_hf.captioner import CHECKOUT_MODEL_DIR, DEFAULT_MODEL_ID, load_captioner

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_installed_wheel_captions_outside_the_checkout(tmp_path: Path) -> None:
    started = time.monotonic()
    # The wheel is built from a copy of what it packages, so that no build/ or *.egg-info lands in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "soli_hf", source / "soli_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    built = run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("soli_hf-*.whl")

    # A new environment whose dependencies are "already installed": this interpreter's site-packages as a plain
    # path line. Unlike a site dir, a folder added this way does not run the .pth files in it, so the checkout's
    # editable soli_hf stays out of sight.
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    new_site = run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], cwd=tmp_path).stdout.strip()
    (Path(new_site) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "TRANSFORMERS_VERBOSITY": "error"}
    work = tmp_path / "work"  # outside the repository
    work.mkdir()
    # find_spec names the file `import soli_hf` would run, without running it (no torch import: seconds saved).
    where = run(
        [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('soli_hf').origin)"],
        cwd=work,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    soli = str(venv / "bin" / "soli")
    info = run([soli, "info", "--model", str(CHECKOUT_MODEL_DIR)], cwd=work, env=env)
    assert info.returncode == 0 and "FLOPs per image" in info.stdout, info.stderr[-3000:]

    photo = work / "photo.jpg"
    rng = np.random.default_rng(0)
    gradient = np.linspace(0.3, 1.0, 180)[:, None, None] * np.array([200.0, 140.0, 60.0])
    Image.fromarray(np.clip(gradient + rng.normal(0, 12, (180, 240, 3)), 0, 255).astype(np.uint8)).save(photo)
    captioned = run([soli, "caption", "--model", str(CHECKOUT_MODEL_DIR), str(photo)], cwd=work, env=env)
    assert captioned.returncode == 0, captioned.stderr[-3000:]
    assert captioned.stdout == f"{photo}\t{load_captioner(CHECKOUT_MODEL_DIR).caption([photo])[0]}\n"

    # No --model and no checkout beside the installed package: the Hub id, neither cached nor reachable here.
    default = run([soli, "caption", str(photo)], cwd=work, env=env)
    assert default.returncode == 2 and default.stdout == ""
    errors = [line for line in default.stderr.splitlines() if line.startswith("soli caption: error:")]
    assert len(errors) == 1 and "Traceback" not in default.stderr, default.stderr[-3000:]
    assert errors[0].startswith(f"soli caption: error: {DEFAULT_MODEL_ID}: no such folder, and not in the Hugging")
    assert f"hf download {DEFAULT_MODEL_ID}" in errors[0] and "--model DIR" in errors[0]
    print(f"wheel build, install and three runs: {time.monotonic() - started:.0f} s")
