#!/usr/bin/env bash
# An aarch64 (arm64) Python 3.11 with numpy, pillow and onnxruntime that runs on this x86_64 machine under
# qemu-user, for scripts/check_arm.py (SOLI's ONNX runtime on ARM: same captions as on x86?).
#
#     sudo scripts/setup_arm64.sh            # idempotent: re-running skips what is already there
#     .cache/arm64/bin/python3.11-aarch64 -c "import platform; print(platform.machine())"   # aarch64
#
# What it builds, all under $ARM64_CACHE (default .cache/arm64, gitignored):
#   rootfs/                 Debian bookworm arm64 (python3.11 and its libraries), unpacked by mmdebstrap
#                           (variant "extract": no maintainer scripts, so no binfmt_misc and no chroot needed)
#   wheels/                 the aarch64 cp311 wheels (PyPI) of the pinned versions below
#   rootfs/usr/local/lib/python3.11/dist-packages/   those wheels, installed (Debian's python3.11 finds them there)
#   qemu-trixie/bin/qemu-aarch64   Debian trixie's qemu 10.0 (static), for the SME check (step 1b)
#   cpu/<model>/            one qemu sysroot per emulated CPU model: links to rootfs/* plus proc/cpuinfo (below)
#   bin/python3.11-aarch64  the launcher: qemu-aarch64-static -cpu $SOLI_ARM64_CPU (default cortex-a76)
#                           -L cpu/$SOLI_ARM64_CPU rootfs/usr/bin/python3.11 "$@"
#                           (SOLI_ARM64_QEMU=trixie: the trixie qemu instead)
#
# Why cpu/<model>/proc/cpuinfo: bookworm's qemu-user (7.2) passes the host's /proc/cpuinfo (x86 text) through to the guest, and
# onnxruntime's aarch64 build (pytorch/cpuinfo, on import) crashes on it: `import onnxruntime` dies with
# "qemu: uncaught target signal 11 (Segmentation fault)" right after reading /sys/devices/system/cpu/*/cache.
# qemu looks every absolute path up in its -L sysroot first, so a sysroot holding an ARM-format proc/cpuinfo
# fixes it. That file is written from what the emulated CPU itself reports (MIDR_EL1 read with `mrs`, and
# AT_HWCAP/AT_HWCAP2 from /proc/self/auxv), so it matches the CPU model qemu emulates. (qemu 10.0 writes an ARM
# /proc/cpuinfo itself, ahead of the sysroot.)
#
# Needs: root (apt-get), network access to the Debian mirror and PyPI, and the host venv's pip ($HOST_PYTHON,
# default .venv/bin/python) to download the wheels.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${ARM64_CACHE:-$ROOT/.cache/arm64}"
SUITE="${ARM64_SUITE:-bookworm}"           # bookworm's python3.11 matches the cp311 wheels
MIRROR="${ARM64_MIRROR:-http://deb.debian.org/debian}"
HOST_PYTHON="${HOST_PYTHON:-$ROOT/.venv/bin/python}"
CPU_MODELS="${ARM64_CPU_MODELS:-cortex-a72 cortex-a76 neoverse-n1 max}"
# The versions of the x86 venv (pyproject's onnx extra and its resolved dependencies).
PINS=(
    "numpy==${NUMPY_VERSION:-2.4.6}"
    "pillow==${PILLOW_VERSION:-13.0.0}"
    "onnxruntime==${ONNXRUNTIME_VERSION:-1.31.1}"
    "flatbuffers==${FLATBUFFERS_VERSION:-25.12.19}"
    "packaging==${PACKAGING_VERSION:-26.3}"
    "protobuf==${PROTOBUF_VERSION:-7.36.2}"
)
PLATFORM_ARGS=(--platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version 3.11
    --implementation cp --abi cp311 --only-binary=:all:)

ROOTFS="$CACHE/rootfs"
WHEELS="$CACHE/wheels"
SITE="$ROOTFS/usr/local/lib/python3.11/dist-packages"
LAUNCHER="$CACHE/bin/python3.11-aarch64"
TRIXIE_QEMU="$CACHE/qemu-trixie/bin/qemu-aarch64"

say() { printf '==> %s\n' "$*"; }
die() { printf 'setup_arm64.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || say "note: this host is $(uname -m), not x86_64 (the set-up is meant for x86_64)"

# 1. Host tools: qemu-user-static (qemu-aarch64-static) and mmdebstrap.
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "need ${missing[*]}: run as root, or apt-get install ${missing[*]} first"
    say "apt-get install ${missing[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi
say "qemu: $(qemu-aarch64-static --version | head -n 1)"
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    say "binfmt_misc has qemu-aarch64 registered (not needed: qemu is invoked explicitly)"
else
    say "binfmt_misc: no qemu-aarch64 entry (fine: qemu is invoked explicitly, no chroot)"
fi

# 1b. Debian trixie's qemu-user 10.0 (static binaries; unpacked from its .deb with a private apt configuration,
#     not installed): bookworm's qemu 7.2 computes wrong results for SME instructions (`-cpu max`), which
#     onnxruntime's int8 kernels use when the CPU has SME; qemu 10.0 emulates them correctly. ARM64_TRIXIE_QEMU=0
#     skips this.
if [ "${ARM64_TRIXIE_QEMU:-1}" != 0 ]; then
    if [ -x "$TRIXIE_QEMU" ]; then
        say "trixie qemu: $("$TRIXIE_QEMU" --version | head -n 1) at $TRIXIE_QEMU"
    else
        say "apt-get download qemu-user from trixie (for its static qemu-aarch64) -> $TRIXIE_QEMU"
        apt_dir="$CACHE/apt-trixie"
        mkdir -p "$apt_dir/etc" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" > "$apt_dir/etc/sources.list"
        apt_options=(-o "Dir::Etc::SourceList=$apt_dir/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State=$apt_dir/state" -o "Dir::Cache=$apt_dir/cache" -o APT::Architecture=amd64
            -o APT::Sandbox::User=root)
        apt-get "${apt_options[@]}" update -qq || die "apt-get update (trixie, private configuration) failed"
        (cd "$apt_dir/deb" && rm -f ./*.deb && apt-get "${apt_options[@]}" download -qq qemu-user) \
            || die "apt-get download qemu-user (trixie) failed"
        rm -rf "$apt_dir/unpacked"
        dpkg-deb -x "$apt_dir"/deb/qemu-user_*.deb "$apt_dir/unpacked" || die "dpkg-deb -x qemu-user failed"
        mkdir -p "$(dirname "$TRIXIE_QEMU")"
        cp "$apt_dir/unpacked/usr/bin/qemu-aarch64" "$TRIXIE_QEMU"
        rm -rf "$apt_dir/unpacked" "$apt_dir/deb" "$apt_dir/cache"
        say "trixie qemu: $("$TRIXIE_QEMU" --version | head -n 1)"
    fi
fi

# 2. The arm64 Debian root file system (python3.11 and the shared libraries the wheels need).
if [ -x "$ROOTFS/usr/bin/python3.11" ]; then
    say "rootfs: $ROOTFS exists (remove it to rebuild)"
else
    [ "$(id -u)" = 0 ] || die "mmdebstrap --mode=root needs root (or rerun with ARM64_CACHE on a writable path as root)"
    say "mmdebstrap $SUITE arm64 (variant extract: python3.11, libpython3.11-stdlib, libstdc++6) -> $ROOTFS"
    rm -rf "$ROOTFS.partial"
    mmdebstrap --quiet --mode=root --variant=extract --arch=arm64 \
        --include=python3.11,libpython3.11-stdlib,libstdc++6 \
        "$SUITE" "$ROOTFS.partial" "$MIRROR" || die "mmdebstrap failed (mirror $MIRROR reachable?)"
    mv "$ROOTFS.partial" "$ROOTFS"
fi
[ -e "$ROOTFS/lib/ld-linux-aarch64.so.1" ] || die "$ROOTFS has no lib/ld-linux-aarch64.so.1 (broken rootfs?)"

# 3. The aarch64 wheels of the pinned versions, installed into the rootfs's dist-packages.
[ -x "$HOST_PYTHON" ] || die "no host Python at $HOST_PYTHON (set HOST_PYTHON to one with pip)"
mkdir -p "$WHEELS"
say "pip download (aarch64, cp311) ${PINS[*]} -> $WHEELS"
"$HOST_PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$WHEELS" "${PLATFORM_ARGS[@]}" \
    "${PINS[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
    || die "pip download of the aarch64 wheels failed"
installed=1
for pin in "${PINS[@]}"; do
    compgen -G "$SITE/${pin%%==*}-${pin##*==}.dist-info" >/dev/null || installed=0
done
if [ "$installed" = 1 ]; then
    say "wheels: already installed in $SITE"
else
    say "pip install --target $SITE (from $WHEELS only)"
    rm -rf "$SITE"
    "$HOST_PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" \
        --target "$SITE" "${PLATFORM_ARGS[@]}" "${PINS[@]}" || die "pip install --target $SITE failed"
fi

# 4. One qemu sysroot per CPU model, with a /proc/cpuinfo in ARM format for that model.
CPUINFO_PY='
import ctypes, mmap, struct
# Linux arm64 hwcap bit names (arch/arm64/include/uapi/asm/hwcap.h), AT_HWCAP then AT_HWCAP2.
HWCAP = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg".split()
HWCAP2 = "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16".split()
code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(struct.pack("<II", 0xD5380000, 0xD65F03C0))  # mrs x0, midr_el1 ; ret
midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(code)))()
auxv = dict(struct.iter_unpack("<QQ", open("/proc/self/auxv", "rb").read()))
names = lambda bits, table: [n for i, n in enumerate(table) if bits >> i & 1]
features = " ".join(names(auxv.get(16, 0), HWCAP) + names(auxv.get(26, 0), HWCAP2))
import sys
for cpu in range(int(sys.argv[1])):
    print(f"processor\t: {cpu}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: {midr >> 24 & 0xff:#04x}\n"
          f"CPU architecture: 8\nCPU variant\t: {midr >> 20 & 0xf:#x}\nCPU part\t: {midr >> 4 & 0xfff:#05x}\n"
          f"CPU revision\t: {midr & 0xf}\n")
'
# As many processors as the host's kernel reports in /sys (which qemu passes through unchanged).
NCPU=$(( $(cut -d- -f2 < /sys/devices/system/cpu/possible | cut -d, -f1) + 1 ))
for model in $CPU_MODELS; do
    prefix="$CACHE/cpu/$model"
    mkdir -p "$prefix/proc"
    for entry in "$ROOTFS"/*; do
        name="$(basename "$entry")"
        case "$name" in proc|sys|dev|tmp) continue ;; esac  # the host's, as qemu passes them through
        ln -sfn "../../rootfs/$name" "$prefix/$name"
    done
    qemu-aarch64-static -cpu "$model" -L "$ROOTFS" "$ROOTFS/usr/bin/python3.11" -I -c "$CPUINFO_PY" "$NCPU" \
        > "$prefix/proc/cpuinfo.new" || die "could not read the emulated CPU's id registers for -cpu $model"
    mv "$prefix/proc/cpuinfo.new" "$prefix/proc/cpuinfo"
    say "sysroot $prefix: proc/cpuinfo for -cpu $model ($NCPU processors; $(grep -m1 '^CPU part' "$prefix/proc/cpuinfo"))"
done

# 5. The launcher.
mkdir -p "$CACHE/bin"
cat > "$LAUNCHER.new" <<EOF
#!/bin/sh
# aarch64 Python 3.11 under qemu-user (written by scripts/setup_arm64.sh). SOLI_ARM64_CPU: a qemu CPU model
# with a sysroot under $CACHE/cpu ($CPU_MODELS); default cortex-a76 (Raspberry Pi 5's core).
cpu="\${SOLI_ARM64_CPU:-cortex-a76}"
[ -f "$CACHE/cpu/\$cpu/proc/cpuinfo" ] || { echo "python3.11-aarch64: no sysroot for CPU \$cpu (ARM64_CPU_MODELS of setup_arm64.sh)" >&2; exit 2; }
qemu=qemu-aarch64-static
[ "\${SOLI_ARM64_QEMU:-bookworm}" = trixie ] && qemu="$TRIXIE_QEMU"
exec "\$qemu" -cpu "\$cpu" -L "$CACHE/cpu/\$cpu" "$ROOTFS/usr/bin/python3.11" "\$@"
EOF
chmod +x "$LAUNCHER.new"
mv "$LAUNCHER.new" "$LAUNCHER"
say "launcher: $LAUNCHER"

# 6. Smoke test: the packages import on (emulated) aarch64, and what the check's guest side imports (the ONNX
#    captioner, soli_hf.bench.arm_check) loads no torch.
say "smoke test (SOLI_ARM64_CPU=cortex-a76)"
SOLI_ARM64_CPU=cortex-a76 PYTHONPATH="$ROOT" "$LAUNCHER" -c '
import platform, sys
import numpy, PIL, onnxruntime
from soli_hf.captioner import OnnxCaptioner
from soli_hf.onnx import SoliOnnxCaptioner
import soli_hf.bench.arm_check
assert "torch" not in sys.modules and "transformers" not in sys.modules
print(f"    {platform.machine()} Python {platform.python_version()}, numpy {numpy.__version__}, pillow {PIL.__version__}, "
      f"onnxruntime {onnxruntime.__version__} ({onnxruntime.get_device()}); the ONNX captioner imported without torch")
' || die "smoke test failed: the aarch64 Python cannot import numpy/pillow/onnxruntime/soli_hf.captioner/soli_hf.onnx"
say "done"
