"""Bad input to the ONNX export and the torch-free runtime, and exports that are interrupted.

- An export (both routes) and `quantize_onnx` write the whole folder or nothing: a failure or a kill -9 half-way
  leaves the previous export complete and captioning; a folder holding other files is refused, never deleted.
- A damaged graph file or `soli_onnx.json` gives a ValueError naming the file (and the manifest key) and saying to
  re-export, not onnxruntime's `InvalidProtobuf` or a KeyError.
- Without `num_threads`, the runtime never uses more threads than the CPUs the process may run on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_python
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'soli-hf[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export(dynamo=True) needs it)")

from soli_hf import cli  # noqa: E402
from soli_hf.onnx import cpus, export, quantize  # noqa: E402
from soli_hf.onnx.export import export_onnx  # noqa: E402
from soli_hf.onnx.quantize import quantize_onnx  # noqa: E402
from soli_hf.onnx.runtime import SoliOnnxCaptioner, session_options  # noqa: E402
from soli_hf.onnx.spec import MANIFEST_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTIMUM_PATH = Path(sys.prefix) / "optimum-onnx"
COMPAT_PATH = Path(sys.prefix) / "compat-transformers-4.57"
EXPORT_FILES = ["decoder_step.onnx", "encoder.onnx", MANIFEST_NAME]


@pytest.fixture(scope="module")
def exported(saved_tiny_model: Path, tmp_path_factory) -> Path:
    """A float32 export of the tiny model (the torch route), read-only for the tests: they copy it."""
    folder = tmp_path_factory.mktemp("export") / "onnx"
    export_onnx(saved_tiny_model, folder, backend="torch")
    return folder


@pytest.fixture
def previous(exported: Path, tmp_path: Path) -> Path:
    """A copy of the export in a folder of its own, as a user's earlier export."""
    return Path(shutil.copytree(exported, tmp_path / "out" / "onnx"))


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def captions(folder: Path, images) -> list[str]:
    return SoliOnnxCaptioner(folder, num_threads=1).caption(images[:2], num_beams=2)


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# --- the export folder: whole or not at all ------------------------------------------------------------------


def folder_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_export_folder_gets_the_umask_permissions(exported: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    assert folder_mode(exported) == 0o777 & ~umask  # not the private 0700 of its temporary folder


def test_reexport_replaces_a_previous_export_whole(previous: Path, saved_tiny_model: Path, images) -> None:
    expected = captions(previous, images)
    previous.chmod(0o750)
    written = export_onnx(saved_tiny_model, previous, backend="torch")
    assert sorted(path.name for path in written) == EXPORT_FILES and all(path.parent == previous for path in written)
    assert sorted(contents(previous)) == EXPORT_FILES and folder_mode(previous) == 0o750
    assert os.listdir(previous.parent) == ["onnx"]  # no temporary folder left behind
    assert captions(previous, images) == expected


def test_export_failing_half_way_leaves_the_previous_export_intact(
    previous: Path, saved_tiny_model: Path, images, monkeypatch
) -> None:
    before, expected = contents(previous), captions(previous, images)
    real_export_graph = export._export_graph

    def encoder_then_disk_full(module, args, graph, out, opset):
        if graph.key == "decoder_step":
            (out / graph.file_name).write_bytes(b"half a graph")
            disk_full()
        return real_export_graph(module, args, graph, out, opset)

    monkeypatch.setattr(export, "_export_graph", encoder_then_disk_full)
    status, _, err = run_cli("export", "--model", str(saved_tiny_model), "--out", str(previous), "--backend", "torch")
    assert status == 2 and f"disk full while writing the ONNX export {previous} (" in err
    assert f"export again; {previous} is unchanged" in err
    assert contents(previous) == before and captions(previous, images) == expected
    assert os.listdir(previous.parent) == ["onnx"]


def test_quantize_failing_half_way_leaves_the_previous_export_intact(exported: Path, previous: Path, monkeypatch):
    before = contents(previous)
    real_quantize = quantize._quantize_with_onnxruntime

    def encoder_then_disk_full(source, destination, settings, nodes_to_exclude):
        if destination.name == "decoder_step.onnx":
            destination.write_bytes(b"half a graph")
            disk_full()
        real_quantize(source, destination, settings, nodes_to_exclude)

    monkeypatch.setattr(quantize, "_quantize_with_onnxruntime", encoder_then_disk_full)
    with pytest.raises(OSError, match=f"disk full while writing the ONNX export {previous}"):
        quantize_onnx(exported, previous, backend="onnxruntime")
    assert contents(previous) == before


@pytest.mark.parametrize("route", ["export", "quantize", "soli export --quantize"])
def test_a_folder_with_other_files_is_refused_and_kept(
    route: str, exported: Path, saved_tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"a user's photo")
    (out / MANIFEST_NAME).write_text("{}")
    message = rf"{out} is not empty and not a SOLI ONNX export \(it holds holiday\.jpg\).*new or empty folder"
    if route == "soli export --quantize":
        status, _, err = run_cli("export", "--model", str(saved_tiny_model), "--out", str(out), "--quantize", "arm64")
        assert status == 2 and "holiday.jpg" in err and "not a SOLI ONNX export" in err
    else:
        with pytest.raises(ValueError, match=message):
            if route == "export":
                export_onnx(saved_tiny_model, out, backend="torch")
            else:
                quantize_onnx(exported, out, backend="onnxruntime")
    assert sorted(os.listdir(out)) == ["holiday.jpg", MANIFEST_NAME]
    assert (out / "holiday.jpg").read_bytes() == b"a user's photo"


def test_a_file_as_output_folder_is_refused(saved_tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"something")
    with pytest.raises(ValueError, match=r"model\.onnx is a file"):
        export_onnx(saved_tiny_model, out, backend="torch")
    assert out.read_bytes() == b"something"


@pytest.mark.slow
def test_soli_export_killed_half_way_keeps_the_previous_export(previous: Path, saved_tiny_model: Path, images):
    """kill -9 while `soli export` writes its graphs: the previous export captions as before, and a re-run
    succeeds."""
    before, expected = contents(previous), captions(previous, images)
    command = [sys.executable, "-m", "soli_hf.cli", "export", "--model", str(saved_tiny_model), "--out", str(previous)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([*command, "--backend", "torch"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(previous.parent.glob(".onnx.tmp-*/encoder.onnx")):  # the encoder written, the decoder next
            assert process.poll() is None, "soli export ended before it could be killed"
            assert time.monotonic() < deadline, "soli export wrote no temporary folder in 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert contents(previous) == before and captions(previous, images) == expected
    (stray,) = previous.parent.glob(".onnx.tmp-*")  # the killed run's unfinished folder, beside the export
    assert not (stray / MANIFEST_NAME).exists()
    status, out, err = run_cli("export", "--model", str(saved_tiny_model), "--out", str(previous), "--backend", "torch")
    assert status == 0, err
    assert out.count("wrote ") == 3 and sorted(contents(previous)) == EXPORT_FILES
    assert captions(previous, images) == expected


@pytest.mark.slow
def test_optimum_export_failing_half_way_leaves_the_previous_export_intact(previous: Path, saved_tiny_model: Path):
    """The Optimum route (in the transformers 4.57 overlay): `main_export` failing after the encoder leaves the
    previous export as it was; a folder with other files is refused."""
    if not (OPTIMUM_PATH.is_dir() and COMPAT_PATH.is_dir()):
        pytest.skip(f"{OPTIMUM_PATH} or {COMPAT_PATH} is missing (`make install` creates them)")
    script = """
import errno, json, sys
from pathlib import Path
from soli_hf.onnx import optimum_export
from soli_hf.onnx.export import export_onnx

def encoder_then_disk_full(model_dir, output, **kwargs):
    (Path(output) / "encoder.onnx").write_bytes(b"a graph")
    raise OSError(errno.ENOSPC, "No space left on device")

saved, previous, other = sys.argv[1:]
real_main_export, optimum_export.main_export = optimum_export.main_export, encoder_then_disk_full
errors = []
try:
    export_onnx(saved, previous, backend="optimum")
except OSError as error:
    errors.append(str(error))
optimum_export.main_export = real_main_export
Path(other).mkdir()
(Path(other) / "notes.txt").write_text("mine")
try:
    export_onnx(saved, other, backend="optimum")
except ValueError as error:
    errors.append(str(error))
print(json.dumps(errors))
"""
    before = contents(previous)
    other = previous.parent / "other"
    env = {"PYTHONPATH": f"{OPTIMUM_PATH}:{COMPAT_PATH}:{ROOT}"}
    errors = run_python(script, str(saved_tiny_model), str(previous), str(other), cwd=previous.parent, extra_env=env)
    assert "disk full while writing the ONNX export" in errors[0] and "notes.txt" in errors[1]
    assert contents(previous) == before and os.listdir(other) == ["notes.txt"]
    assert sorted(os.listdir(previous.parent)) == ["onnx", "other"]


# --- damaged graph files and manifests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [lambda data: data[: len(data) // 2], lambda data: b"<html>not found</html>", lambda data: b""],
    ids=["truncated", "garbage", "empty"],
)
def test_damaged_graph_file_names_the_file_and_says_to_reexport(previous: Path, tmp_path: Path, damage) -> None:
    decoder = previous / "decoder_step.onnx"
    decoder.write_bytes(damage(decoder.read_bytes()))
    with pytest.raises(ValueError, match=rf"{decoder}: damaged or not an ONNX graph.*re-export the folder"):
        SoliOnnxCaptioner(previous)
    with pytest.raises(ValueError, match=rf"{decoder}: damaged or not an ONNX graph.*re-export the folder"):
        quantize_onnx(previous, tmp_path / "int8", backend="onnxruntime")


def test_soli_caption_onnx_with_a_damaged_graph_is_a_clear_error(previous: Path, tmp_path: Path, images) -> None:
    (previous / "encoder.onnx").write_bytes(b"\0" * 100)
    image = tmp_path / "photo.png"
    Image.fromarray(images[0]).save(image)
    status, _, err = run_cli("caption", str(image), "--onnx", str(previous))
    assert status == 2 and "encoder.onnx: damaged or not an ONNX graph" in err and "re-export" in err


def edit_manifest(folder: Path, edit) -> Path:
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


def delete(*keys: str):
    def edit(manifest: dict) -> None:
        *parents, last = keys
        for key in parents:
            manifest = manifest[key]
        del manifest[last]

    return edit


def assign(value, *keys: str):
    def edit(manifest: dict) -> None:
        *parents, last = keys
        for key in parents:
            manifest = manifest[key]
        manifest[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (delete("vocabulary"), "missing key 'vocabulary'"),
        (delete("generation", "num_beams"), "missing key 'generation.num_beams'"),
        (delete("graphs", "encoder", "file"), "missing key 'graphs.encoder.file'"),
        (delete("preprocessing", "image_size"), "missing key 'preprocessing.image_size'"),
        (assign("3", "generation", "num_beams"), "key 'generation.num_beams' must be an integer, got a string"),
        (assign(True, "generation", "eos_token_id"), "key 'generation.eos_token_id' must be an integer, got true"),
        (assign([1, None], "skip_token_ids"), r"key 'skip_token_ids\[1\]' must be an integer, got null"),
        (assign({"a": 0}, "vocabulary"), "key 'vocabulary' must be an array, got an object"),
        (assign(None, "preprocessing", "blur_sigma"), "key 'preprocessing.blur_sigma' must be an integer or a number"),
        (assign(0, "generation", "num_beams"), "generation: num_beams must be a positive integer"),
        (assign(1, "generation", "top_k"), r"generation: unknown generation settings \['top_k'\]"),
    ],
)
def test_bad_manifest_names_the_file_and_the_key(previous: Path, edit, message: str) -> None:
    path = edit_manifest(previous, edit)
    with pytest.raises(ValueError, match=rf"{path}: .*{message}.*re-export the folder"):
        SoliOnnxCaptioner(previous)


def test_manifest_that_is_not_json_names_the_file_line_and_column(previous: Path) -> None:
    path = previous / MANIFEST_NAME
    path.write_text('{\n  "format_version": 1,\n  "graphs": {\n', encoding="utf-8")  # cut off
    with pytest.raises(ValueError, match=rf"{path}: invalid JSON at line 4 column 1: .*re-export the folder"):
        SoliOnnxCaptioner(previous)


def test_manifest_with_a_bom_loads(previous: Path, images) -> None:
    path = previous / MANIFEST_NAME
    expected = captions(previous, images)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert captions(previous, images) == expected


# --- the default thread count ------------------------------------------------------------------------------------


@pytest.fixture
def machine(tmp_path: Path, monkeypatch):
    """An 8-CPU machine whose cgroup files live in tmp_path; returns a function writing one of them."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(cpus, "PROC_SELF_CGROUP", tmp_path / "proc_self_cgroup")
    (tmp_path / "proc_self_cgroup").write_text("0::/user.slice/soli.scope\n")

    def write(relative: str, text: str) -> None:
        path = tmp_path / "cgroup" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    return write


def test_default_threads_follow_the_cpu_affinity(machine, monkeypatch) -> None:
    assert cpus.available_cpus() == 8
    assert session_options().intra_op_num_threads == 0  # the whole machine: onnxruntime's own default
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpus.available_cpus() == 3 and session_options().intra_op_num_threads == 3
    assert session_options(num_threads=5).intra_op_num_threads == 5  # an explicit count is kept


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "max 100000"}, 8),
        ({"cpu.max": "150000 100000"}, 1),  # 1.5 CPUs: rounded down
        ({"cpu.max": "50000 100000"}, 1),  # half a CPU: still one thread
        ({"user.slice/cpu.max": "400000 100000", "user.slice/soli.scope/cpu.max": "max 100000"}, 4),  # an ancestor
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 8),  # v1 without a quota
        ({"cpu.max": "lots 100000"}, 8),  # unreadable: ignored
    ],
)
def test_default_threads_follow_a_cgroup_cpu_quota(machine, files: dict[str, str], expected: int) -> None:
    for relative, text in files.items():
        machine(relative, text)
    assert cpus.available_cpus() == expected
    assert session_options().intra_op_num_threads == (0 if expected == 8 else expected)


def test_captioner_sessions_use_the_available_cpus(machine, exported: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    captioner = SoliOnnxCaptioner(exported)
    for session in captioner.sessions.values():
        assert session.get_session_options().intra_op_num_threads == 1


@pytest.mark.skipif(shutil.which("taskset") is None or (os.cpu_count() or 1) < 2, reason="needs taskset and 2 CPUs")
def test_under_taskset_one_cpu_the_runtime_uses_one_thread(exported: Path, tmp_path: Path) -> None:
    script = """
import json, sys
from soli_hf.onnx.runtime import SoliOnnxCaptioner
captioner = SoliOnnxCaptioner(sys.argv[1])
print(json.dumps([s.get_session_options().intra_op_num_threads for s in captioner.sessions.values()]))
"""
    result = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", script, str(exported)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [1, 1]
