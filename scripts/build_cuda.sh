#!/usr/bin/env bash
# Builds `pretrain` with candle's CUDA kernels (`--features cuda`) against a
# CUDA toolkit taken from PyPI wheels (no system CUDA needed):
# nvidia-cuda-nvcc, -cuda-runtime, -cublas, -curand, -cuda-nvrtc, -cuda-cccl.
#
#   scripts/build_cuda.sh                   # build target/cuda/release/pretrain
#                                           # (and release/examples/gpu_check)
#   CUDA_COMPUTE_CAP=80 scripts/build_cuda.sh   # A100 (default 90: H100/H200)
#   CUDA_VERSION=12.9 scripts/build_cuda.sh # CUDA 12 wheels (-cu12); default 13.0
#
# CUDA_VERSION (default 13.0) pins every wheel to that release: candle loads
# its kernels as PTX, which the driver compiles at run time and refuses when
# it is newer than the driver (13.0 is what driver 580, the device machines'
# driver, runs; the binary then uses the machine's own CUDA 13 libraries).
#   MODE=check scripts/build_cuda.sh        # `cargo check` only (no link, no driver library;
#                                           # compile-time wheels only: 100 MiB, not 661 MiB)
#   MODE=test scripts/build_cuda.sh         # also build the model crate's tests with CUDA
#
# The toolkit goes to a virtual environment ($CUDA_VENV, default
# target/cuda/venv); the build to its own target dir ($CARGO_TARGET_DIR,
# default target/cuda), so it never invalidates the CPU build in target/.
# Running needs the NVIDIA driver (libcuda.so.1), which no package provides:
# it comes with the GPU machine. Linking `pretrain` needs libcuda.so too
# (candle has cudarc link it, `dynamic-linking`); the script uses the
# driver's if the machine has one, else the toolkit's link stub
# (lib64/stubs/libcuda.so) when a wheel ships it, else it generates one
# (scripts/cuda_stub/make_libcuda_stub.sh, in $CARGO_TARGET_DIR/stub): every
# driver function cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY.
# The binary then needs "libcuda.so.1", which on a GPU machine is the real
# driver; here the last line's LD_LIBRARY_PATH names the stub, and
# `--device cuda` says that there is no driver.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
CUDA_VERSION="${CUDA_VERSION:-13.0}"
CUDA_MAJOR="${CUDA_VERSION%%.*}"
CUDA_VENV="${CUDA_VENV:-$ROOT/target/cuda/venv}"
PYTHON="${PYTHON:-python3}"
MODE="${MODE:-build}"
mkdir -p "${CARGO_TARGET_DIR:-$ROOT/target/cuda}"
# Absolute: the toolkit and the stub live in it, named on LD_LIBRARY_PATH.
CARGO_TARGET_DIR=$(cd "${CARGO_TARGET_DIR:-$ROOT/target/cuda}" && pwd)
export CARGO_TARGET_DIR
export CUDA_COMPUTE_CAP

log() { echo "build_cuda: $*" >&2; }

# 1. The toolkit from PyPI (CUDA 12 wheels carry a -cu12 suffix; CUDA 13 ones
#    none, and nvcc 13 pulls nvvm and crt, pinned alike). curand has its own
#    version numbers: the newest one that the pinned runtime accepts.
#    MODE=check compiles the kernels (nvcc) but links nothing: it skips the
#    libraries (cublas, nvrtc, curand: 561 of the 661 MiB of CUDA 13.0 wheels).
suffix=""
[[ "$CUDA_MAJOR" == 12 ]] && suffix="-cu12"
wheels=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl)
[[ "$MODE" == check ]] || wheels+=(nvidia-cublas nvidia-cuda-nvrtc)
pkgs=()
for p in "${wheels[@]}"; do
    pkgs+=("$p$suffix==$CUDA_VERSION.*")
done
[[ "$MODE" == check ]] || pkgs+=("nvidia-curand$suffix")
[[ "$CUDA_MAJOR" == 12 ]] || pkgs+=("nvidia-nvvm==$CUDA_VERSION.*" "nvidia-cuda-crt==$CUDA_VERSION.*")
if [[ ! -x "$CUDA_VENV/bin/python" ]]; then
    log "creating $CUDA_VENV"
    "$PYTHON" -m venv "$CUDA_VENV"
fi
log "installing ${pkgs[*]}"
"$CUDA_VENV/bin/pip" install --quiet --disable-pip-version-check "${pkgs[@]}" >&2

# 2. One CUDA_HOME: the wheels unpack under site-packages/nvidia/{cuda_nvcc,
#    cuda_runtime,...} (CUDA 12) or site-packages/nvidia/cu13 (CUDA 13);
#    link them into one tree with bin/, include/, lib64/ as tools expect.
SITE=$("$CUDA_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA_HOME="$CARGO_TARGET_DIR/toolkit"
rm -rf "$CUDA_HOME"
mkdir -p "$CUDA_HOME/bin" "$CUDA_HOME/include" "$CUDA_HOME/lib64" "$CUDA_HOME/nvvm"
for part in "$SITE"/nvidia/*/; do
    for sub in bin include lib lib64 nvvm; do
        [[ -d "$part$sub" ]] || continue
        dest="$CUDA_HOME/$sub"
        [[ "$sub" == lib ]] && dest="$CUDA_HOME/lib64"
        mkdir -p "$dest"
        # cp -s: a tree of symlinks (nvcc finds its own tools relative to itself).
        cp -rsn "$part$sub/." "$dest/" 2>/dev/null || true
    done
done
# Wheels ship versioned libraries (libcudart.so.12); the linker wants the bare names.
for lib in "$CUDA_HOME"/lib64/lib*.so.*; do
    [[ -e "$lib" ]] || continue
    base="${lib%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$lib")" "$base"
done
[[ -x "$CUDA_HOME/bin/nvcc" ]] || { log "no nvcc under $CUDA_HOME/bin after the install"; exit 1; }
export CUDA_HOME CUDA_PATH="$CUDA_HOME" CUDA_ROOT="$CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LIBRARY_PATH="$CUDA_HOME/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
log "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -n 1); compute capability $CUDA_COMPUTE_CAP"

# 3. libcuda.so for the link: the driver's, else a toolkit stub.
libcuda=""
for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/wsl/lib; do
    for f in "$d/libcuda.so" "$d/libcuda.so.1"; do
        [[ -e "$f" ]] && { libcuda="$f"; break 2; }
    done
done
if [[ -z "$libcuda" ]]; then
    stub=$(find "$CUDA_HOME/lib64/" -path '*stubs*' -name 'libcuda.so' 2>/dev/null | head -n 1 || true)
    [[ -n "$stub" ]] && libcuda="$stub"
fi
STUB_DIR=""
if [[ -z "$libcuda" && "$MODE" != check ]]; then
    # No driver (a build machine, CI): generate the link stub. Its directory
    # goes on LD_LIBRARY_PATH below only for running here; nothing stages it.
    STUB_DIR="$CARGO_TARGET_DIR/stub"
    scripts/cuda_stub/make_libcuda_stub.sh "$STUB_DIR"
    libcuda="$STUB_DIR/libcuda.so"
fi
if [[ -n "$libcuda" ]]; then
    log "linking against $libcuda"
    export LIBRARY_PATH="$(dirname "$libcuda"):$LIBRARY_PATH"
    if [[ "$(basename "$libcuda")" == libcuda.so.1 ]]; then
        mkdir -p "$CUDA_HOME/driver"
        ln -sf "$libcuda" "$CUDA_HOME/driver/libcuda.so"
        export LIBRARY_PATH="$CUDA_HOME/driver:$LIBRARY_PATH"
    fi
fi

# 4. Build (or check) `pretrain` with CUDA; nice: others may share the cores.
case "$MODE" in
check)
    log "cargo check --features cuda (target dir $CARGO_TARGET_DIR)"
    nice -n 19 cargo check --release --locked -p pretrain-cli -p pretrain-model --features pretrain-cli/cuda,pretrain-model/cuda
    ;;
build | test)
    # `pretrain` and the parity check (`gpu_check`, for scripts/gpu_check.sh)
    # in one invocation: one feature set, so candle and its kernels' PTX
    # are compiled once, not once per package.
    log "cargo build --features cuda (target dir $CARGO_TARGET_DIR)"
    nice -n 19 cargo build --release --locked -p pretrain-cli -p pretrain-model \
        --features pretrain-cli/cuda,pretrain-model/cuda --bin pretrain --example gpu_check
    if [[ "$MODE" == test ]]; then
        nice -n 19 cargo test --release --locked -p pretrain-model --features cuda --no-run
    fi
    log "built $CARGO_TARGET_DIR/release/pretrain and $CARGO_TARGET_DIR/release/examples/gpu_check"
    ;;
*)
    log "MODE must be build, check or test"
    exit 2
    ;;
esac
# What a caller needs to run the binary: the toolkit's libraries on the path
# (and the generated stub's, where it stands in for the absent driver).
echo "export LD_LIBRARY_PATH=$CUDA_HOME/lib64${STUB_DIR:+:$STUB_DIR}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
