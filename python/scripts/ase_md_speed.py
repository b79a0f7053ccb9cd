#!/usr/bin/env python3
"""MD speed through the ASE calculator: VelocityVerlet NVE of benzene (or a cluster of
benzenes) with painn.ase.PaiNNCalculator, steps per second excluding the first call (model
upload, neighbour list, GPU kernel compilation).

    python3 python/scripts/ase_md_speed.py --model target/models/student_427k.safetensors \\
        --device cpu --steps 2000
    python3 python/scripts/ase_md_speed.py --device cuda --steps 5000

Each step is one engine call (energy + forces) plus ASE's Python integrator; the numbers
therefore include ASE's own overhead, which dominates for a molecule this small on a GPU.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import molecule
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from painn.ase import PaiNNCalculator

REPO = Path(__file__).resolve().parents[2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get(
        "PAINN_STUDENT_MODEL", str(REPO / "target/models/student_427k.safetensors")))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--precision", default="f32", help="f32 (default) or f64")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--timestep-fs", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    atoms = molecule("C6H6")
    atoms.calc = PaiNNCalculator(args.model, device=args.device, precision=args.precision)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=args.timestep_fs * units.fs)

    start = time.perf_counter()
    e0 = atoms.get_total_energy()  # the first call: excluded from the timing
    first = time.perf_counter() - start
    start = time.perf_counter()
    dynamics.run(args.steps)
    elapsed = time.perf_counter() - start
    e1 = atoms.get_total_energy()

    rate = args.steps / elapsed
    print(f"painn ASE MD speed: benzene ({len(atoms)} atoms), model {Path(args.model).name}, "
          f"device {atoms.calc.device} ({args.device}), precision {args.precision}")
    print(f"first call {first * 1e3:.1f} ms; {args.steps} VelocityVerlet steps of {args.timestep_fs} fs "
          f"in {elapsed:.3f} s")
    print(f"{rate:.1f} steps/s ({1e6 / rate:.1f} us/step, {rate * len(atoms):.0f} atom-steps/s); "
          f"total energy {e0:.6f} -> {e1:.6f} eV")
    return 0


if __name__ == "__main__":
    sys.exit(main())
