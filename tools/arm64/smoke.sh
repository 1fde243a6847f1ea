#!/usr/bin/env bash
# ARM64 smoke test under emulation: an arm64 Debian bookworm root file system (debootstrap), the device install
# in a venv inside it (aarch64 wheels, installed offline under qemu), then tools/arm64/smoke.py there and the
# package check on this machine.
#
#   tools/arm64/smoke.sh            # the smoke test (needs root for debootstrap, qemu-user-static, network once)
#   tools/arm64/smoke.sh --speed    # also EMULATED frames/s of MobileNetV2 bundles at 96 and 224 px
#
# $ARM64_ROOT: the root file system (default /work/arm64-root; never inside a git checkout).
# $EDGELEARN_PYTHON: this machine's Python with the full install (default: python3).
# $ARM64_TRAIN_ONLY: the dependencies left out of the device install (default: the training stack).
# $EDGELEARN_MNV2_WEIGHTS: the MobileNetV2 state dict for --speed (default: the shared one).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=$(realpath -m "${ARM64_ROOT:-/work/arm64-root}")
HOST_PYTHON=${EDGELEARN_PYTHON:-python3}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
OPT=$ROOT/opt/edgelearn
VENV=$OPT/venv
WHEELS=$OPT/wheels
# The training stack: not part of the device install (the [train] extra once pyproject.toml has it).
TRAIN_ONLY=${ARM64_TRAIN_ONLY:-torch torchvision captum scipy scikit-image matplotlib imagehash onnx onnxscript torchmetrics}
SMOKE_ONLY="httpx"  # the smoke's HTTP client

say() { printf '\n== %s\n' "$*"; }
die() { printf 'smoke.sh: %s\n' "$*" >&2; exit 1; }

# Runs an aarch64 program. Without binfmt_misc the kernel cannot start one, so qemu runs it directly; with -L
# (and QEMU_LD_PREFIX for its children) absolute paths resolve inside the root file system first.
export QEMU_LD_PREFIX=$ROOT
emulate() { qemu-aarch64-static -L "$ROOT" "$@"; }
# This checkout's code on this machine; the device imports only what is installed in its venv.
host() { PYTHONPATH="$REPO/src" "$HOST_PYTHON" "$@"; }
unset PYTHONPATH

check_root_location() {
    local parent
    parent=$(dirname "$ROOT")
    mkdir -p "$parent"
    if git -C "$parent" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        die "ARM64_ROOT=$ROOT is inside a git checkout; choose a folder outside it"
    fi
    command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing: apt-get install qemu-user-static"
    [ -d /proc/sys/fs/binfmt_misc ] && [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
        && echo "binfmt_misc has qemu-aarch64 (not needed: qemu is called directly)" || true
}

# Debian's packages, unpacked. The second stage of debootstrap would run arm64 maintainer scripts, which needs
# binfmt_misc; python3 runs fine from the unpacked packages, so they are only extracted.
build_rootfs() {
    [ -x "$ROOT/usr/bin/python3.11" ] && return
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    say "debootstrap arm64 bookworm into $ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv bookworm "$ROOT" "$MIRROR"
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$ROOT" --keep-directory-symlink
    done
}

# qemu 7.2's user mode shows the guest this machine's x86 /proc/cpuinfo, on which ONNX Runtime's CPU detection
# (cpuinfo, at import) crashes: the root gets an arm64 one (Cortex-A72, a Raspberry Pi 4's core, one entry per
# CPU here); the rest of /proc and /sys are this machine's (qemu falls back to them).
emulated_cpu() {
    [ -L "$ROOT/proc" ] && rm "$ROOT/proc"
    [ -L "$ROOT/sys" ] || { rmdir "$ROOT/sys" && ln -s /sys "$ROOT/sys"; }
    mkdir -p "$ROOT/proc"
    for i in $(seq 0 $(($(nproc --all) - 1))); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done >"$ROOT/proc/cpuinfo"
}

device_requirements() {  # pyproject's dependencies less the training stack, one a line
    "$HOST_PYTHON" - "$REPO/pyproject.toml" "$TRAIN_ONLY" <<'EOF'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
train = set(sys.argv[2].split())
print("\n".join(d for d in deps if re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() not in train))
EOF
}

download_wheels() {
    local requirements=$OPT/requirements.txt
    mkdir -p "$WHEELS"
    { device_requirements; tr ' ' '\n' <<<"$SMOKE_ONLY"; } >"$requirements.new"
    if cmp -s "$requirements.new" "$requirements"; then rm "$requirements.new"; else
        say "aarch64 wheels of: $(tr '\n' ' ' <"$requirements.new")"
        "$HOST_PYTHON" -m pip download --quiet --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
            --platform manylinux_2_28_aarch64 --only-binary=:all: --python-version 3.11 -d "$WHEELS" \
            -r "$requirements.new"
        mv "$requirements.new" "$requirements"
    fi
    rm -f "$WHEELS"/edgelearn-*.whl
    "$HOST_PYTHON" -m pip wheel --quiet --no-deps -w "$WHEELS" "$REPO"
}

# pip runs from Debian's pip wheel (ensurepip would start the venv's aarch64 Python as a child process);
# the project without its dependencies, as they still name torch until the [train] split.
install_device() {
    [ -x "$VENV/bin/python" ] || emulate "$ROOT/usr/bin/python3" -m venv --without-pip "$VENV"
    local pip=("$VENV/bin/python" "$(ls "$ROOT"/usr/share/python-wheels/pip-*.whl)/pip" --disable-pip-version-check)
    say "installing the device wheels offline under emulation"
    PIP_CONFIG_FILE=/dev/null emulate "${pip[@]}" install --quiet --no-index --find-links "$WHEELS" \
        -r "$OPT/requirements.txt"
    PIP_CONFIG_FILE=/dev/null emulate "${pip[@]}" install --quiet --no-index --no-deps --force-reinstall \
        "$WHEELS"/edgelearn-*.whl
}

smoke() {
    local work
    work=$(mktemp -d "$OPT/smoke.XXXXXX")
    say "tiny bundle (64 px), exported with the full install"
    host -m edgelearn export-backbone -o "$work/tiny.edgebundle" --backbone tiny --weights random \
        --input-size 64 --json >/dev/null
    say "smoke under emulation (aarch64)"
    EDGELEARN_SMOKE_PYTHON="qemu-aarch64-static -L $ROOT $VENV/bin/python" \
        EDGELEARN_TOKEN=${EDGELEARN_TOKEN:-arm64-smoke-token-0123} \
        emulate "$VENV/bin/python" "$REPO/tools/arm64/smoke.py" device "$work" "$work/tiny.edgebundle"
    say "the device's package on this machine"
    host "$REPO/tools/arm64/smoke.py" host "$work" "$work/tiny.edgebundle"
    rm -rf "$work"
}

speed() {
    local weights=${EDGELEARN_MNV2_WEIGHTS:-/work/shared/models/mobilenet_v2_imagenet.pt} bundles=() size
    for size in 96 224; do
        bundles+=("$(dirname "$ROOT")/mnv2-$size.edgebundle")  # outside the checkout
        [ -e "${bundles[-1]}" ] || host -m edgelearn export-backbone -o "${bundles[-1]}" \
            --weights "$weights" --input-size "$size" --json >/dev/null
    done
    say "EMULATED frames/s (qemu on this machine's CPU, not a board's speed)"
    emulate "$VENV/bin/python" "$REPO/tools/arm64/smoke.py" speed "${bundles[@]}"
}

check_root_location
build_rootfs
emulated_cpu
download_wheels
install_device
smoke
if [ "${1:-}" = --speed ]; then speed; fi
say "arm64 smoke passed"
