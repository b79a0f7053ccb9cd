"""Time the PyTorch reference (float32, CPU, energy + forces) for side-by-side benchmarks.

    python -m painn.reference_bench MODEL.safetensors STRUCTURES... [--threads N]
        [--repeats R] [--warmup W]

STRUCTURES are JSON files in the reference-fixture layout ({name: {"Z", "pos", "cell",
optional "pbc"}}, e.g. tests/data/tiny_reference.json) or any file ASE can read (needs
ase). One JSON line per structure is printed. The neighbour list is built once outside
the timed region and reported separately: the brute-force search is a test tool, not a
fair competitor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Iterator, Sequence, Tuple

import numpy as np
import torch

from . import reference


def time_energy_forces(model: reference.Model, Z, positions, cell=None,
                       pbc: Sequence[bool] = (False, False, False), threads: int = 1,
                       repeats: int = 10, warmup: int = 2) -> dict:
    """Median wall time of one float32 energy + forces evaluation, after warm-up runs."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    neighbors = reference.neighbor_list(positions, cell, pbc, model.cutoff)
    neighbor_seconds = time.perf_counter() - start

    def run():
        return reference.evaluate(model, Z, positions, cell, pbc, dtype=torch.float32,
                                  virial=False, neighbors=neighbors)

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "atoms": len(positions),
        "edges": int(len(neighbors[0])),
        "threads": threads,
        "repeats": repeats,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "neighbor_list_s": neighbor_seconds,
    }


def read_structures(path: Path) -> Iterator[Tuple[str, dict]]:
    """(name, {"Z", "pos", "cell", "pbc"}) for each structure of a file."""
    if path.suffix == ".json":
        for name, case in json.loads(path.read_text()).items():
            cell = case.get("cell")
            pbc = case.get("pbc", [cell is not None] * 3)
            yield f"{path.name}:{name}", {"Z": case["Z"], "pos": case["pos"], "cell": cell,
                                          "pbc": pbc}
        return
    import ase.io

    for index, atoms in enumerate(ase.io.read(str(path), index=":")):
        pbc = [bool(p) for p in atoms.pbc]
        yield f"{path.name}:{index}", {"Z": atoms.numbers, "pos": atoms.positions,
                                       "cell": np.asarray(atoms.cell) if any(pbc) else None,
                                       "pbc": pbc}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m painn.reference_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="painn .safetensors model file")
    parser.add_argument("structures", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads value")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    model = reference.load_model(args.model)
    for path in args.structures:
        for name, s in read_structures(path):
            timing = time_energy_forces(model, s["Z"], s["pos"], s["cell"], s["pbc"],
                                        threads=args.threads, repeats=args.repeats,
                                        warmup=args.warmup)
            print(json.dumps({"structure": name, **timing}), flush=True)


if __name__ == "__main__":
    main()
