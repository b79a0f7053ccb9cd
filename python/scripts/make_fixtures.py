#!/usr/bin/env python3
"""Regenerate the engine's test fixtures in tests/data/ (deterministic, fixed seeds).

    python3 python/scripts/make_fixtures.py [--out-dir tests/data]

* tiny_model.safetensors: a random float64 student PaiNN (H=32, L=2, K=8, max_z=10,
  cutoff 4 A) with the last layer's mixing matrix absent, as in the ONNX export;
* tiny_reference.json: float64 results of painn.reference for six structures, one
  object per case (same layout as shared/reference/seed_reference_f64.json plus "pbc",
  per-atom "energies", "tolerance" and "description").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from painn import model_format, reference  # noqa: E402  (needs the path above)

REPO = Path(__file__).resolve().parents[2]
MODEL_FILE = "tiny_model.safetensors"
REFERENCE_FILE = "tiny_reference.json"

SEED = 20241125
HIDDEN, LAYERS, RADIAL, MAX_Z, CUTOFF = 32, 2, 8, 10, 4.0
ELEMENTS = model_format.CHEMICAL_SYMBOLS[1:MAX_Z + 1]
TOLERANCE = 1e-9        # max abs error allowed on every float64 result of a case
MIN_DISTANCE = 0.8      # angstrom, between any two atoms or images
# The model is discontinuous at the cutoff (an edge at d = rc still carries the filter's
# bias terms), so no distance may come near rc, or round-off could change the graph.
CUTOFF_MARGIN = 0.05    # angstrom
DECIMALS = 4            # positions are rounded so that the JSON stays short and exact


def make_model(rng: np.random.Generator) -> dict:
    """Random weights scaled so that activations stay O(1): W ~ N(0, 1/fan_in), b ~ N(0, 0.1^2)."""
    def linear(name, fan_out, fan_in):
        tensors[f"{name}.weight"] = rng.normal(0.0, fan_in ** -0.5, (fan_out, fan_in))
        tensors[f"{name}.bias"] = rng.normal(0.0, 0.1, fan_out)

    h = HIDDEN
    tensors = {
        "embedding.weight": rng.normal(0.0, 1.0, (MAX_Z + 1, h)),
        "rbf.centers": np.linspace(0.0, CUTOFF, RADIAL),
        # Distinct widths, so that swapping centers and widths or two indices shows.
        "rbf.widths": np.linspace(0.35, 0.75, RADIAL),
    }
    for l in range(LAYERS):
        linear(f"interactions.{l}.message.rbf_to_scalar.0", h, RADIAL)
        linear(f"interactions.{l}.message.rbf_to_scalar.2", 3 * h, h)
        linear(f"interactions.{l}.update.update_mlp.0", h, 2 * h)
        linear(f"interactions.{l}.update.update_mlp.2", 3 * h, h)
        if l + 1 < LAYERS:  # the last one is absent, as in the ONNX export
            # Not symmetric, so that M and M^T give different results.
            tensors[model_format.mixing_matrix_name(l)] = np.eye(3) + rng.normal(0.0, 0.4, (3, 3))
    linear("energy_head.0", h // 2, h)
    linear("energy_head.2", h // 4, h // 2)
    linear("energy_head.4", 1, h // 4)
    return tensors


def tensors_sha256(tensors: dict) -> str:
    """Content hash standing in for a source file's hash in the provenance."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()


def geometry_ok(positions, cell, pbc) -> bool:
    """All atom-atom and atom-image distances >= MIN_DISTANCE and away from the cutoff."""
    receivers, sources, shifts = reference.neighbor_list(positions, cell, pbc,
                                                         CUTOFF + CUTOFF_MARGIN)
    lattice = np.zeros((3, 3)) if cell is None else np.asarray(cell)
    r = positions[sources] - positions[receivers] + shifts @ lattice
    d = np.linalg.norm(r, axis=1)
    return bool(np.all(d >= MIN_DISTANCE) and np.all(np.abs(d - CUTOFF) >= CUTOFF_MARGIN))


def place_atoms(rng, count, sample, cell=None, pbc=(False, False, False), start=None):
    """Draw positions one by one from ``sample(rng)``, rejecting those too close to others."""
    positions = np.zeros((0, 3)) if start is None else np.asarray(start, dtype=float)
    for _ in range(100_000):
        if len(positions) == count:
            return positions
        trial = np.vstack([positions, np.round(sample(rng), DECIMALS)])
        if geometry_ok(trial, cell, pbc):
            positions = trial
    raise RuntimeError("could not place the atoms; loosen the geometry")


def in_cell(cell):
    cell = np.asarray(cell)
    return lambda rng: rng.uniform(0.0, 1.0, 3) @ cell


def make_cases() -> dict:
    """Structures (Z, pos, cell, pbc, description); each case has its own seed."""
    cases = {}

    rng = np.random.default_rng([SEED, 1])
    cases["molecule"] = dict(
        description="8 atoms, Z = 1..8, non-periodic; some pairs beyond the cutoff",
        Z=rng.permutation(np.arange(1, 9)),
        pos=place_atoms(rng, 8, lambda g: g.uniform(-1.8, 1.8, 3)),
        cell=None, pbc=[False] * 3)

    rng = np.random.default_rng([SEED, 2])
    cell = np.array([[9.0, 0.0, 0.0], [3.2, 8.0, 0.0], [-2.4, 2.1, 10.0]])
    pbc = [True] * 3
    pos = place_atoms(rng, 30, in_cell(cell), cell, pbc)
    # Give some atoms unwrapped, several lattice vectors outside the cell.
    unwrap = {0: (2, -1, 0), 5: (0, 0, 3), 10: (-3, 1, -2), 15: (1, 1, 1), 20: (-1, 0, 2),
              25: (0, -2, -1)}
    for atom, shift in unwrap.items():
        pos[atom] = np.round(pos[atom] + np.array(shift) @ cell, DECIMALS)
    cases["triclinic_box"] = dict(
        description="30 atoms, fully periodic, strongly triclinic cell; atoms 0, 5, 10, 15, "
                    "20, 25 lie outside the cell by a few lattice vectors",
        Z=rng.permutation(np.tile(np.arange(1, MAX_Z + 1), 3)), pos=pos, cell=cell, pbc=pbc)

    rng = np.random.default_rng([SEED, 3])
    cell = np.array([[7.0, 0.0, 0.0], [1.5, 6.5, 0.0], [0.5, -0.3, 6.0]])
    pbc = [True, True, False]

    def slab_site(g):
        return np.append(g.uniform(0.0, 1.0, 2) @ cell[:2, :2], g.uniform(0.5, 5.5))

    cases["slab"] = dict(
        description="20 atoms, periodic in a and b only; the 6 A c vector would bring images "
                    "within the cutoff if it were wrongly treated as periodic",
        Z=rng.integers(1, MAX_Z + 1, 20), pos=place_atoms(rng, 20, slab_site, cell, pbc),
        cell=cell, pbc=pbc)

    rng = np.random.default_rng([SEED, 4])
    cell = np.array([[2.7, 0.0, 0.0], [0.6, 3.0, 0.0], [-0.4, 0.5, 3.3]])
    pbc = [True] * 3
    cases["tiny_cell_self_images"] = dict(
        description="2 atoms in a cell shorter than the cutoff: each sees its own images and "
                    "several images of the other",
        Z=np.array([6, 8]), pos=place_atoms(rng, 2, in_cell(cell), cell, pbc), cell=cell, pbc=pbc)

    cases["isolated_atom"] = dict(
        description="a single atom: no edges; its energy is the energy head of its embedding "
                    "after the update MLPs (which still run, with n_i = 0); zero force",
        Z=np.array([7]), pos=np.array([[0.3, -1.2, 2.5]]), cell=None, pbc=[False] * 3)

    rng = np.random.default_rng([SEED, 6])
    molecule = place_atoms(rng, 4, lambda g: g.uniform(-1.2, 1.2, 3))
    cases["atom_without_neighbours"] = dict(
        description="a 4-atom molecule plus a Li atom about 20 A away: finite results, exactly "
                    "zero force on the lone atom (its vector norm has zero gradient)",
        Z=np.array([6, 1, 1, 8, 3]), pos=np.vstack([molecule, [[21.0, 0.5, -0.5]]]),
        cell=None, pbc=[False] * 3)

    for name, case in cases.items():
        if not geometry_ok(case["pos"], case["cell"], case["pbc"]):
            raise RuntimeError(f"case {name} violates the geometry rules")
    return cases


def _plain(value):
    """JSON-ready copy: numpy to Python, -0.0 to 0.0."""
    if isinstance(value, np.ndarray):
        return (value + 0.0).tolist() if value.dtype.kind == "f" else value.tolist()
    return value


def to_json(value, indent: int = 0) -> str:
    """JSON with each innermost list on one line, so that matrices read as rows."""
    pad = " " * indent
    if isinstance(value, dict):
        items = [f"{pad}  {json.dumps(k)}: {to_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(x, list) for x in value):
        items = [f"{pad}  {to_json(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    out_dir = parser.parse_args().out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    # One thread: reductions in a fixed order, hence the same digits on every run.
    torch.set_num_threads(1)

    tensors = make_model(np.random.default_rng(SEED))
    meta = model_format.build_metadata(tensors, source="make_fixtures.py",
                                       source_sha256=tensors_sha256(tensors), elements=ELEMENTS)
    model_format.save(out_dir / MODEL_FILE, tensors, meta)
    model = reference.load_model(out_dir / MODEL_FILE)

    results = {}
    for name, case in make_cases().items():
        r = reference.evaluate(model, case["Z"], case["pos"], case["cell"], case["pbc"])
        results[name] = {
            "description": case["description"],
            "Z": _plain(case["Z"]),
            "pos": _plain(case["pos"]),
            "cell": _plain(case["cell"]),
            "pbc": case["pbc"],
            "energy": r.energy,
            "energies": _plain(r.energies),
            "forces": _plain(r.forces),
            "virial": _plain(r.virial),
            "edges": r.edges,
            "tolerance": TOLERANCE,
        }
        print(f"{name:26s} atoms={len(case['Z']):3d} edges={r.edges:5d} "
              f"energy={r.energy:+.10f} eV max|F|={np.abs(r.forces).max():.4f}")
    (out_dir / REFERENCE_FILE).write_text(to_json(results) + "\n")


if __name__ == "__main__":
    main()
