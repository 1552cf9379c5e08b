"""The ARM check of `scripts/check_arm.py`: does SOLI's ONNX model give the same captions on aarch64 (ARM64)
onnxruntime as on x86? Checked on this x86 machine with an aarch64 Python 3.11 under qemu-user (set up by
scripts/setup_arm64.sh):

    scripts/setup_arm64.sh
    .venv/bin/python scripts/check_arm.py                       # int8 (arm64 target) 160 + fp32 20 dev images
    .venv/bin/python scripts/check_arm.py --onnx DIR --num-images 30 --cpu cortex-a72 --out /tmp/arm
    .venv/bin/python scripts/check_arm.py --onnx DIR --images a.jpg b.png

For each ONNX folder it captions the images on x86 (this Python, onnxruntime) and in the aarch64 Python (under
`qemu-aarch64 -cpu MODEL`, PYTHONPATH = the repository, no torch there: the torch-free path), greedy and
with the model's default beam size, and compares caption by caption. It writes `check.json` and `check.md`
(default benchmarks/arm64/; check.md from `soli_hf.bench.arm_check_report`, `--render-only` rewrites it from
check.json): machines, versions, identical counts, every difference, wall times. Exit status: 0 all identical,
3 some caption differs, 1 an aarch64 run failed.

Both sides caption with the same code (`caption_modes` over an `OnnxCaptioner`: preprocess and encode once per
batch, then each search, as `generate()` does), and on x86 that is checked to equal `OnnxCaptioner.caption()`. The
guest runs this module (`python -m soli_hf.bench.arm_check --guest`), which imports only the standard library at
the top and numpy, pillow, onnxruntime and soli_hf's torch-free modules when it captions.
By default the folders are `.cache/arm64/onnx/int8-arm64` (`quantize_onnx(..., target="arm64")`) and
`.cache/arm64/onnx/fp32`, exported afresh from models/soli-flickr8k-lr64 on every run, so that the check covers
the current export code (that needs torch on x86).
`--cpu` takes qemu CPU models, "trixie:MODEL" for Debian trixie's qemu 10.0 (default: cortex-a76, cortex-a72,
trixie:max); the CPUs after the first caption only the first `--extra-cpu-images` images of the first folder.
Before that, two probes: `import onnxruntime` under qemu 7.2 with the host's /proc/cpuinfo (it crashes), and the
int8 encoder on a random batch with SME on and off under both qemus (qemu 7.2 miscomputes SME).

Under qemu every NEON float instruction is emulated in software, so ARM timings here say nothing about a real
ARM board (one image takes ~2 s here, mostly the float32 MobileNetV2 encoder); they only size the run.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .arm_check_report import ROOT, in_repository, render_arm_check, split_target

if TYPE_CHECKING:
    from ..captioner import OnnxCaptioner

CACHE = Path(os.environ.get("ARM64_CACHE", ROOT / ".cache" / "arm64")).resolve()  # as in setup_arm64.sh
ROOTFS = CACHE / "rootfs"
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"  # ../shared beside the repository
DEV_LIST = FLICKR8K / "Flickr8k_text" / "Flickr_8k.devImages.txt"
DEV_IMAGES = FLICKR8K / "Flicker8k_Dataset"
SHIPPED_MODEL = ROOT / "models" / "soli-flickr8k-lr64"
# N chosen so that a default run takes < 15 min on this 2-core machine shared with other jobs (~3 s per image
# under qemu when loaded): a first run with 200 int8 + 40 fp32 images took 16.9 min.
DEFAULT_ONNX = [(CACHE / "onnx" / "int8-arm64", 160), (CACHE / "onnx" / "fp32", 20)]
# The emulators: Debian bookworm's qemu-user-static 7.2 (apt) and trixie's qemu-user 10.0 (setup_arm64.sh step 1b).
EMULATORS = {"bookworm": "qemu-aarch64-static", "trixie": str(CACHE / "qemu-trixie" / "bin" / "qemu-aarch64")}
DEFAULT_CPUS = ["cortex-a76", "cortex-a72", "trixie:max"]
SME_PROBE_CPUS = ["max", "max,sme=off", "trixie:max", "trixie:max,sme=off"]
ISSUE = (
    "ARM: the int8 model runs under aarch64 onnxruntime and gives the same captions as on x86 (Debian's qemu-user "
    "and aarch64 wheels from PyPI make this checkable here)"
)


# ---------------------------------------------------------------------------------------------------------------
# Both sides (x86 and the aarch64 guest): numpy, pillow, onnxruntime and torch-free soli_hf only.
# ---------------------------------------------------------------------------------------------------------------


def caption_modes(
    captioner: OnnxCaptioner, images: list[str], beam_sizes: list[int]
) -> tuple[dict[int, list[str]], dict, list]:
    """Captions of `images` for each beam size, preprocessing and encoding once (what `generate()` does per call).

    Returns (captions by beam size, seconds by step, the encoder outputs).
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    pixel_values = captioner.preprocess(images)
    seconds["preprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    encoded = captioner.runtime.encode(pixel_values)
    seconds["encode"] = time.perf_counter() - start
    captions = {}
    for num_beams in beam_sizes:
        start = time.perf_counter()
        captions[num_beams] = captioner.decode(captioner.runtime.search(encoded, num_beams=num_beams))
        seconds[f"decode_beams{num_beams}"] = time.perf_counter() - start
    return captions, seconds, encoded


def runtime_info() -> dict[str, Any]:
    """Machine and package versions of this process, and whether torch/transformers got imported."""
    import numpy
    import onnxruntime
    import PIL

    info = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_device": onnxruntime.get_device(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "torch_imported": "torch" in sys.modules,
        "transformers_imported": "transformers" in sys.modules,
    }
    try:  # the emulated CPU's features (from its HWCAPs, written by setup_arm64.sh) or the host's flags
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "CPU part", "Features"):
                info[f"cpuinfo_{key.strip().replace(' ', '_').lower()}"] = value.strip()
    except OSError:
        pass
    return info


def encode_arrays(arrays: list) -> str:
    """numpy arrays as one base64 .npz (to send the guest's encoder outputs to the host; never written to disk)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return base64.b64encode(buffer.getvalue()).decode()


def decode_arrays(text: str) -> list:
    """The arrays of `encode_arrays(arrays)`, in order."""
    import numpy as np

    with np.load(io.BytesIO(base64.b64decode(text))) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def guest_main() -> int:
    """The aarch64 side: a job (JSON) on stdin, one JSON line per event on stdout."""
    job = json.loads(sys.stdin.read())
    os.environ.setdefault("SOLI_HF_NO_TORCH", "1")
    start = time.perf_counter()
    from ..captioner import load_captioner

    captioner = load_captioner(onnx=job["onnx_dir"], num_threads=job["threads"])
    info = runtime_info()
    info["load_seconds"] = time.perf_counter() - start
    print(json.dumps({"event": "info", **info}), flush=True)
    images, size = job["images"], job["batch_size"]
    for index in range(0, len(images), size):
        captions, seconds, encoded = caption_modes(captioner, images[index : index + size], job["beam_sizes"])
        event = {"event": "batch", "start": index, "captions": captions, "seconds": seconds}
        if index == 0:
            event["encoded"] = encode_arrays(encoded)
        print(json.dumps(event), flush=True)
    print(json.dumps({"event": "done"}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The host (x86) side.
# ---------------------------------------------------------------------------------------------------------------


def run_text(command: list[str], **kwargs: Any) -> str:
    """A command's first output line, or "" if it cannot run."""
    try:
        return subprocess.run(command, capture_output=True, text=True, **kwargs).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return ""


def parse_target(spec: str) -> tuple[str, str]:
    """`split_target(spec)`, exiting with a message for an emulator that is not one of `EMULATORS`."""
    emulator, cpu = split_target(spec)
    if emulator not in EMULATORS:
        sys.exit(f"check_arm.py: --cpu {spec}: emulator must be one of {sorted(EMULATORS)}")
    return emulator, cpu


def sysroot(cpu: str) -> Path:
    """The qemu -L sysroot of a CPU model (its ARM /proc/cpuinfo); "max,sme=off" uses max's."""
    return CACHE / "cpu" / cpu.split(",")[0]


def qemu_command(spec: str, root: Path | None = None) -> list[str]:
    """The command that runs the aarch64 Python under the qemu and CPU of `spec` (sysroot `root`, default the
    CPU's)."""
    emulator, cpu = parse_target(spec)
    python = str(ROOTFS / "usr" / "bin" / "python3.11")
    return [EMULATORS[emulator], "-cpu", cpu, "-L", str(root or sysroot(cpu)), python]


def qemu_version(spec: str) -> str:
    """The `--version` line of the qemu of `spec`."""
    return run_text([EMULATORS[parse_target(spec)[0]], "--version"])


def check_setup(cpus: list[str]) -> None:
    """Exit with a clear message when scripts/setup_arm64.sh has not been run (or not for these CPU models)."""
    problems = []
    for emulator in sorted({parse_target(spec)[0] for spec in cpus}):
        if not run_text([EMULATORS[emulator], "--version"]):
            problems.append(f"the {emulator} qemu ({EMULATORS[emulator]}) does not run")
    if not (ROOTFS / "usr" / "bin" / "python3.11").is_file():
        problems.append(f"no aarch64 rootfs at {ROOTFS}")
    for root in dict.fromkeys(sysroot(parse_target(spec)[1]) for spec in cpus):
        if not (root / "proc" / "cpuinfo").is_file():
            problems.append(f"no qemu sysroot {root}")
    if problems:
        sys.exit(f"check_arm.py: {'; '.join(problems)}: run scripts/setup_arm64.sh (ARM64_CPU_MODELS for other CPUs)")


def probe_without_cpuinfo(cpu: str) -> dict[str, Any]:
    """`import onnxruntime` in the aarch64 Python with qemu's pass-through (x86) /proc/cpuinfo, which is why
    setup_arm64.sh writes an ARM one: records what happens (a segmentation fault with onnxruntime 1.31.1)."""
    command = [*qemu_command(cpu, ROOTFS), "-c", "import onnxruntime; print(onnxruntime.__version__)"]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/tmp", timeout=300)
    output = (result.stdout + result.stderr).strip()
    return {
        "command": in_repository(shlex.join(command)),
        "returncode": result.returncode,
        "output": output[-400:],
    }


SME_PROBE = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
shape = [2 if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
outputs = session.run(None, {session.get_inputs()[0].name: x})
print(" ".join(str(float(v)) for out in outputs for v in out.ravel()[:4096]))
"""


def probe_sme(onnx_dir: Path, specs: list[str]) -> list[dict[str, Any]]:
    """The int8 encoder on a seeded random batch (no image data) under each qemu/CPU: max |x86 - aarch64| of its
    outputs' first values. Shows that bookworm's qemu 7.2 miscomputes onnxruntime's SME int8 path (-cpu max)."""
    import numpy as np

    encoder = str((onnx_dir / "encoder.onnx").resolve())
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    x86 = subprocess.run([sys.executable, "-c", SME_PROBE, encoder], capture_output=True, text=True, check=True)
    reference = np.array(x86.stdout.split(), dtype=np.float64)
    results = []
    for spec in specs:
        run = subprocess.run([*qemu_command(spec), "-c", SME_PROBE, encoder], capture_output=True, text=True, env=env)
        entry: dict[str, Any] = {"cpu": spec, "qemu": qemu_version(spec), "returncode": run.returncode}
        if run.returncode == 0:
            values = np.array(run.stdout.split(), dtype=np.float64)
            entry["max_abs_diff_vs_x86"] = float(np.max(np.abs(values - reference)))
        else:
            entry["error"] = run.stderr.strip()[-400:]
        results.append(entry)
        outcome = entry.get("max_abs_diff_vs_x86", entry.get("error"))
        print(f"  encoder outputs, random batch, -cpu {spec}: max |x86 - aarch64| {outcome}", flush=True)
    return results


def build_default_folders(folders: list[Path]) -> None:
    """Export models/soli-flickr8k-lr64 (fp32) and quantize it (int8, arm64 target) into the default folders when
    any of them is checked (a subprocess, so this process stays torch-free)."""
    fp32, int8 = CACHE / "onnx" / "fp32", CACHE / "onnx" / "int8-arm64"
    if not {fp32, int8} & {folder.resolve() for folder in folders}:
        return
    print(f"check_arm.py: exporting {SHIPPED_MODEL.name} to {fp32} and quantizing it (arm64) to {int8}", flush=True)
    code = (
        "import sys; from pathlib import Path\n"
        "from soli_hf.onnx.export import export_onnx\n"
        "from soli_hf.onnx.quantize import quantize_onnx\n"
        "model, fp32, int8 = map(Path, sys.argv[1:])\n"
        "export_onnx(model, fp32)\n"
        "quantize_onnx(fp32, int8, target='arm64')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "SOLI_HF_NO_TORCH"}  # export needs torch
    command = [sys.executable, "-c", code, str(SHIPPED_MODEL), str(fp32), str(int8)]
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)


def dev_images(count: int) -> list[str]:
    """The first `count` Flickr8k dev images (exits with a message without the dataset)."""
    if not DEV_LIST.is_file():
        sys.exit(f"check_arm.py: no Flickr8k dev list at {DEV_LIST} (use --images FILE ...)")
    names = [line.strip() for line in DEV_LIST.read_text().splitlines() if line.strip()]
    return [str(DEV_IMAGES / name) for name in names[:count]]


def progress(total: int, description: str):
    """A tqdm bar on stderr (updates at least every 30 s when stderr is not a terminal)."""
    from tqdm import tqdm

    interval = 1 if sys.stderr.isatty() else 30
    return tqdm(total=total, desc=description, unit="img", file=sys.stderr, mininterval=interval)


def caption_x86(onnx_dir: Path, images: list[str], beam_sizes: list[int], args: argparse.Namespace) -> dict:
    """x86 captions (caption_modes) for all images, checked against `OnnxCaptioner.caption()`."""
    from ..captioner import load_captioner

    start = time.perf_counter()
    captioner = load_captioner(onnx=onnx_dir, num_threads=args.threads)
    captions: dict[int, list[str]] = {k: [] for k in beam_sizes}
    seconds: dict[str, float] = {}
    public_mismatches = 0
    first_encoded = None
    with progress(len(images), f"x86 {onnx_dir.name}") as bar:
        for index in range(0, len(images), args.batch_size):
            batch = images[index : index + args.batch_size]
            got, spent, encoded = caption_modes(captioner, batch, beam_sizes)
            first_encoded = first_encoded if first_encoded is not None else encoded
            for key, value in spent.items():
                seconds[key] = seconds.get(key, 0.0) + value
            for k in beam_sizes:
                captions[k] += got[k]
                public_mismatches += sum(
                    a != b for a, b in zip(got[k], captioner.caption(batch, num_beams=k), strict=True)
                )
            bar.update(len(batch))
    return {
        "captions": captions,
        "seconds": seconds,
        "wall_seconds": time.perf_counter() - start,
        "caption_api_mismatches": public_mismatches,
        "encoded": first_encoded,
        "quantization": captioner.quantization,
        "info": runtime_info(),
    }


def caption_arm(onnx_dir: Path, images: list[str], beam_sizes: list[int], cpu: str, args: argparse.Namespace) -> dict:
    """The same captions from the aarch64 Python under qemu (`guest_main`), with a progress bar."""
    job = {
        "onnx_dir": str(onnx_dir.resolve()),
        "images": [str(Path(image).resolve()) for image in images],
        "beam_sizes": beam_sizes,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    command = [*qemu_command(cpu), "-m", __spec__.name, "--guest"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOLI_HF_NO_TORCH": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("VIRTUAL_ENV", None)
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    process.stdin.write(json.dumps(job))
    process.stdin.close()
    result: dict[str, Any] = {"captions": {k: [] for k in beam_sizes}, "seconds": {}, "done": False}
    with progress(len(images), f"aarch64 ({cpu}) {onnx_dir.name}") as bar:
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "info":
                result["info"] = {k: v for k, v in event.items() if k != "event"}
            elif event["event"] == "batch":
                for k in beam_sizes:
                    result["captions"][k] += event["captions"][str(k)]
                for key, value in event["seconds"].items():
                    result["seconds"][key] = result["seconds"].get(key, 0.0) + value
                if "encoded" in event:
                    result["encoded"] = decode_arrays(event["encoded"])
                bar.update(len(event["captions"][str(beam_sizes[0])]))
            elif event["event"] == "done":
                result["done"] = True
    stderr = process.stderr.read()
    result["returncode"] = process.wait()
    result["wall_seconds"] = time.perf_counter() - start
    result["command"] = in_repository(" ".join(command))
    if result["returncode"] != 0 or not result["done"]:
        result["error"] = stderr.strip()[-2000:]
    return result


def compare(onnx_dir: Path, cpu: str, images: list[str], x86: dict, arm: dict, beam_sizes: list[int]) -> dict:
    """One row of the report: identical counts and the differences, per search."""
    import numpy as np

    row: dict[str, Any] = {
        "onnx_dir": in_repository(str(onnx_dir.resolve())),
        "quantization": x86["quantization"],
        "cpu": cpu,
        "qemu": qemu_version(cpu),
        "images": len(images),
        "arm64": arm.get("info"),
        "arm64_command": arm["command"],
        "arm64_returncode": arm["returncode"],
        "arm64_wall_seconds": round(arm["wall_seconds"], 1),
        "arm64_seconds": {key: round(value, 2) for key, value in arm["seconds"].items()},
        "modes": {},
    }
    if "error" in arm:
        row["arm64_error"] = arm["error"]
    done = len(arm["captions"][beam_sizes[0]])
    row["images_captioned_on_arm64"] = done
    for k in beam_sizes:
        # An aarch64 run that failed part-way captioned only its first images: compare those.
        pairs = list(zip(images, x86["captions"][k][: len(images)], arm["captions"][k], strict=False))
        row["modes"][f"num_beams={k}"] = {
            "identical": sum(a == b for _, a, b in pairs),
            "compared": len(pairs),
            "differences": [{"image": Path(i).name, "x86": a, "arm64": b} for i, a, b in pairs if a != b],
        }
    if arm.get("encoded") is not None and x86["encoded"] is not None:
        names = ["memory", "keys", "hidden", "cell"]
        count = len(arm["encoded"][0])
        row["encoder_max_abs_diff_first_batch"] = {
            name: float(np.max(np.abs(a[:count] - b)))
            for name, a, b in zip(names, x86["encoded"], arm["encoded"], strict=True)
        }
    return row


def parse_arguments(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser of `scripts/check_arm.py` and the parsed arguments."""
    parser = argparse.ArgumentParser(description="Same captions on aarch64 onnxruntime (under qemu-user) as on x86?")
    parser.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--onnx",
        type=Path,
        action="append",
        help="an ONNX folder (repeatable; default: int8-arm64 and fp32 under .cache/arm64/onnx)",
    )
    parser.add_argument(
        "--num-images",
        type=int,
        action="append",
        help="Flickr8k dev images per --onnx folder (once per folder, or once for all; default 160 int8, 20 fp32)",
    )
    parser.add_argument("--images", nargs="+", help="caption these files instead of Flickr8k dev images")
    parser.add_argument(
        "--cpu",
        action="append",
        help="[bookworm:|trixie:]qemu CPU model (repeatable; default: cortex-a76 (Raspberry Pi 5's "
        "core), "
        "cortex-a72 (Pi 4's), trixie:max (SVE, SME, i8mm, under qemu 10.0))",
    )
    parser.add_argument(
        "--extra-cpu-images",
        type=int,
        default=20,
        help="images for the CPUs after the first (first --onnx folder only)",
    )
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads on both sides")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "arm64")
    parser.add_argument(
        "--no-probe", action="store_true", help="skip the probes (no ARM /proc/cpuinfo under qemu 7.2; SME on and off)"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite check.md in --out from the check.json there, without checking",
    )
    return parser, parser.parse_args(argv)


def run_check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The whole check (probes, then each folder on x86 and on each emulated CPU): the report of check.json."""
    from ..onnx.manifest import read_manifest

    os.environ["SOLI_HF_NO_TORCH"] = "1"  # this process, too, uses the torch-free runtime
    started, wall_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.perf_counter()
    folders = args.onnx or [folder for folder, _ in DEFAULT_ONNX]
    counts = args.num_images or ([n for _, n in DEFAULT_ONNX] if not args.onnx else [200])
    if len(counts) == 1:
        counts = counts * len(folders)
    if len(counts) != len(folders):
        parser.error("give --num-images once, or once per --onnx folder")
    cpus = args.cpu or DEFAULT_CPUS
    check_setup(cpus + ([] if args.no_probe else SME_PROBE_CPUS))
    build_default_folders(folders)
    if args.images:
        missing = [image for image in args.images if not Path(image).is_file()]
        if missing:
            parser.error(f"no such image(s): {missing}")
        counts = [len(args.images)] * len(folders)
        pool, source = list(args.images), f"{len(args.images)} files given with --images"
    else:
        pool = dev_images(max(counts))
        source = f"the first N of Flickr8k's {DEV_LIST.name} (N per row below)"
    report: dict[str, Any] = {
        "issue": ISSUE,
        "date": started,
        "command": in_repository(" ".join(["python", *sys.argv])),
        "qemu": {name: run_text([path, "--version"]) for name, path in EMULATORS.items()},
        "rootfs": run_text(["cat", str(ROOTFS / "etc" / "debian_version")]) or "bookworm",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "image_source": source,
        "host_cores": os.cpu_count(),
        "rows": [],
    }
    if not args.no_probe:
        print("check_arm.py: import onnxruntime on aarch64 without an ARM /proc/cpuinfo (expected to fail)", flush=True)
        report["probe_without_arm_cpuinfo"] = probe_without_cpuinfo("cortex-a76")
        int8 = next((folder for folder in folders if "quantization" in read_manifest(folder)), None)
        if int8 is not None:
            print(f"check_arm.py: int8 encoder of {int8} on a random batch, SME on and off", flush=True)
            report["probe_sme"] = {"onnx_dir": str(int8), "results": probe_sme(int8, SME_PROBE_CPUS)}
    mismatches = 0
    for position_folder, (folder, count) in enumerate(zip(folders, counts, strict=True)):
        images = pool[:count]
        beam_sizes = sorted({1, read_manifest(folder)["generation"]["num_beams"]})
        x86 = caption_x86(folder, images, beam_sizes, args)
        mismatches += x86["caption_api_mismatches"]
        report["x86"] = x86["info"]
        for position, cpu in enumerate(cpus if position_folder == 0 else cpus[:1]):
            subset = images if position == 0 else images[: args.extra_cpu_images]
            arm = caption_arm(folder, subset, beam_sizes, cpu, args)
            row = compare(folder, cpu, subset, x86, arm, beam_sizes)
            row["x86_wall_seconds"] = round(x86["wall_seconds"], 1)
            row["x86_seconds"] = {key: round(value, 3) for key, value in x86["seconds"].items()}
            report["rows"].append(row)
            modes = row["modes"].items()
            summary = ", ".join(f"{mode}: {m['identical']}/{m['compared']} identical" for mode, m in modes)
            print(f"{row['onnx_dir']} -cpu {cpu}: {summary} ({row['arm64_wall_seconds']:.0f} s on aarch64)", flush=True)
            if "arm64_error" in row:
                print(f"  aarch64 run failed (exit {row['arm64_returncode']}): {row['arm64_error'][-500:]}", flush=True)
    report["caption_api_mismatches"] = mismatches
    report["wall_seconds"] = round(time.perf_counter() - wall_start, 1)
    return report


def exit_status(report: dict[str, Any]) -> int:
    """0 when every caption is identical, 3 when one differs, 1 when an aarch64 run failed."""
    failed = any("arm64_error" in row for row in report["rows"])
    different = any(m["identical"] != m["compared"] for row in report["rows"] for m in row["modes"].values())
    return 1 if failed else (3 if different else 0)


def main(argv: list[str] | None = None) -> int:
    """`scripts/check_arm.py`: run the check and return `exit_status` (with --guest: the aarch64 side; with
    --render-only: only check.md from check.json, 0)."""
    parser, args = parse_arguments(argv)
    if args.guest:
        return guest_main()
    report_json, report_md = args.out / "check.json", args.out / "check.md"
    if args.render_only:
        report = json.loads(report_json.read_text(encoding="utf-8"))
        report_md.write_text(render_arm_check(report), encoding="utf-8")
        print(f"wrote {report_md}")
        return 0
    report = run_check(parser, args)
    args.out.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    report_md.write_text(render_arm_check(report), encoding="utf-8")
    print(f"wrote {report_json} and {report_md} ({report['wall_seconds'] / 60:.1f} min)")
    return exit_status(report)


if __name__ == "__main__":  # the aarch64 guest: python -m soli_hf.bench.arm_check --guest
    sys.exit(main())
