#!/usr/bin/env python3
"""Benchmark of the PyTorch implementation of the same weights (painn.reference, float32,
energy + forces by autograd), eager and torch.compile, on the structures `painn bench
--write-structures DIR` wrote, so that both codes time the same atoms on the same device in
one run (benches/gpu/run_on_device.sh runs both on a GPU).

    python3 python/scripts/bench_gpu.py MODEL.safetensors DIR [--device cuda|cpu]
        [--max-atoms 24576] [--compile-max-atoms 3072] [--repeats 20]

Prints one JSON object per line: system, atoms, mode (eager | compile), median_us,
peak_memory_mib. The neighbour list is built once, outside the timed region.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from painn import reference  # noqa: E402

SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8}


def read_xyz(path: Path):
    """The extended XYZ that `painn bench --write-structures` writes (one frame)."""
    lines = path.read_text().splitlines()
    n = int(lines[0])
    cell = None
    if "Lattice=" in lines[1]:
        numbers = lines[1].split('Lattice="')[1].split('"')[0].split()
        cell = np.array([float(x) for x in numbers]).reshape(3, 3)
    z, pos = [], []
    for line in lines[2:2 + n]:
        fields = line.split()
        z.append(SYMBOLS[fields[0]])
        pos.append([float(x) for x in fields[1:4]])
    return np.array(z), np.array(pos), cell


def timed(function, repeats, synchronize):
    for _ in range(3):
        function()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def edges(pos, cell, pbc, cutoff):
    """The edges (untimed): ASE's O(n) list where ASE is installed, else the brute force of
    painn.reference (O(n^2 x images): minutes for periodic boxes of 10^4 atoms)."""
    try:
        from ase.neighborlist import primitive_neighbor_list
    except ImportError:
        return reference.neighbor_list(pos, cell, pbc, cutoff)
    pos = np.asarray(pos, dtype=np.float64)
    if cell is None:
        # An open box: ASE wants a cell; any one enclosing the atoms will do.
        extent = pos.max(axis=0) - pos.min(axis=0) + 2 * cutoff + 1.0
        box = np.diag(extent)
    else:
        box = np.asarray(cell, dtype=np.float64)
    i, j, shift = primitive_neighbor_list("ijS", pbc, box, pos, cutoff, self_interaction=False)
    order = np.lexsort((shift[:, 2], shift[:, 1], shift[:, 0], j, i))
    return i[order], j[order], shift[order]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--max-atoms", type=int, default=24576)
    parser.add_argument("--compile-max-atoms", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    model = reference.load_model(args.model)
    weights = {k: v.to(device) for k, v in model.weights(torch.float32).items()}
    compiled = torch.compile(reference.atomic_energies, dynamic=False)
    structures = []
    for path in args.directory.glob("*.xyz"):
        z, pos, cell = read_xyz(path)
        if len(z) <= args.max_atoms:
            structures.append((len(z), path.stem, z, pos, cell))
    for atoms, name, z, pos, cell in sorted(structures, key=lambda s: s[0]):
        pbc = (cell is not None,) * 3
        receivers, sources, shifts = edges(pos, cell, pbc, model.cutoff)
        zt = torch.as_tensor(z, device=device)
        rt = torch.as_tensor(receivers, device=device)
        st = torch.as_tensor(sources, device=device)
        lattice = torch.as_tensor(np.zeros((3, 3)) if cell is None else cell, dtype=torch.float32,
                                  device=device)
        shift = torch.as_tensor(shifts, dtype=torch.float32, device=device) @ lattice
        modes = [("eager", reference.atomic_energies)]
        if atoms <= args.compile_max_atoms:
            modes.append(("compile", compiled))
        for mode, energies_of in modes:
            def step():
                # Host positions in, host forces out, as the painn benchmark does.
                p = torch.tensor(pos, dtype=torch.float32, device=device, requires_grad=True)
                r = p[st] - p[rt] + shift
                energy = energies_of(model, weights, zt, r, rt, st).sum()
                forces = -torch.autograd.grad(energy, p)[0]
                return energy.item(), forces.cpu()

            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            median = timed(step, args.repeats if atoms < 10000 else max(3, args.repeats // 4),
                           synchronize)
            print(json.dumps({
                "system": name, "atoms": atoms, "mode": mode, "median_us": median * 1e6,
                "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None,
                "device": torch.cuda.get_device_name() if on_gpu else "cpu",
                "threads": None if on_gpu else torch.get_num_threads(),
            }), flush=True)


if __name__ == "__main__":
    main()
