#!/usr/bin/env bash
# Builds diffsql (and the forward_bench example) with `--features cuda` on a machine that has no GPU and no
# CUDA toolkit, as the GPU check in bench/README.md was built: nvcc and the CUDA headers come from PyPI wheels
# (version 13.0, to match a CUDA 13.0 driver; pass another as $1), and the libraries that are linked
# dynamically (libcuda, cuBLAS, cuRAND, NVRTC) are stand-in stubs holding only the symbol names: the real
# ones are found on the GPU machine at run time (driver, and the nvidia-* Python wheels on LD_LIBRARY_PATH).
# Where a CUDA toolkit is installed, plain `cargo build --release --features cuda` does the same.
#
#   tools/build-cuda.sh [CUDA_VERSION] [COMPUTE_CAP]      # defaults: 13.0, 90 (H100/H200)
#   → $CARGO_TARGET_DIR/debug/diffsql and .../examples/forward_bench; stripped, xz-compressed copies in .gpu/
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-13.0}"
cap="${2:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/diffsql-target}"
toolkit="${CUDA_TOOLKIT_DIR:-$HOME/.cache/diffsql-cuda-$version}"

if [ ! -x "$toolkit/bin/nvcc" ]; then
    wheels="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps -d "$wheels" "nvidia-cuda-nvcc==$version.*" \
        "nvidia-cuda-runtime==$version.*" "nvidia-cuda-cccl==$version.*" "nvidia-nvvm==$version.*" \
        "nvidia-cuda-crt==$version.*"
    unpacked="$(mktemp -d)"
    for w in "$wheels"/*.whl; do python3 -m zipfile -e "$w" "$unpacked"; done
    major="${version%%.*}"
    rm -rf "$toolkit"
    mv "$unpacked/nvidia/cu$major" "$toolkit"
    chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/*
    ln -sf libcudart.so."$major" "$toolkit/lib/libcudart.so"
fi
export PATH="$toolkit/bin:$PATH" CUDA_ROOT="$toolkit" CUDA_PATH="$toolkit" CUDA_COMPUTE_CAP="$cap"

# Stubs: first build the crates, then read the CUDA symbols they call and make one stub library per soname.
stubs() {
    local deps="$CARGO_TARGET_DIR/debug/deps" symbols
    symbols="$(mktemp)"
    nm -u --quiet "$deps"/libcudarc-*.rlib "$deps"/libcandle_core-*.rlib "$deps"/libcandle_nn-*.rlib 2>/dev/null \
        | awk '{print $NF}' | grep -E '^(cu[A-Z]|curand|nvrtc|cublas)' | sort -u > "$symbols"
    stub() { # library soname pattern [exclude]
        grep -E "$3" "$symbols" | grep -vE "${4:-^$}" | sed 's/.*/void &(void) {}/' > "$toolkit/lib/$1.c"
        cc -shared -fPIC -Wl,-soname,"$2" -o "$toolkit/lib/$1.so" "$toolkit/lib/$1.c"
    }
    stub libcuda libcuda.so.1 '^cu[A-Z]'
    stub libcurand libcurand.so.10 '^curand'
    stub libnvrtc libnvrtc.so."${version%%.*}" '^nvrtc'
    stub libcublasLt libcublasLt.so."${version%%.*}" '^cublasLt'
    stub libcublas libcublas.so."${version%%.*}" '^cublas' '^cublasLt'
}
build() { cargo build --features cuda --bin diffsql --example forward_bench; }
if [ ! -e "$toolkit/lib/libcuda.so" ]; then
    echo "first build: compiles the crates; its link step fails (no CUDA libraries yet), then the stubs are made"
    build || true
    stubs
fi
build
mkdir -p .gpu
strip -o .gpu/diffsql "$CARGO_TARGET_DIR/debug/diffsql"
strip -o .gpu/forward_bench "$CARGO_TARGET_DIR/debug/examples/forward_bench"
xz -T0 -6 -f .gpu/diffsql .gpu/forward_bench # ~40 MB together, small enough to carry to a GPU machine
echo "built with CUDA $version for sm_$cap: .gpu/diffsql.xz, .gpu/forward_bench.xz"
echo "note: $CARGO_TARGET_DIR/debug/diffsql is now the CUDA build; run 'cargo build' before 'cargo test'"
