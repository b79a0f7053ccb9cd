"""Readable PyTorch reference of the student PaiNN model (shared/spec/student-painn.md).

This is the yardstick for the Rust engine: it follows the spec line by line, in float64
by default, and takes forces and virial from autograd, so that the engine's hand-written
backward pass is checked against an independent derivative. Speed is not a goal.

Conventions (the same as the engine's):

* edges j -> i (source j, receiver i) with r_ij = r_j - r_i + n . cell, where n is an
  integer image shift and the rows of ``cell`` are the lattice vectors; every edge with
  0 < |r_ij| <= cutoff, including i == j with n != 0;
* forces F_i = -dE/dr_i;
* virial W[a][b] = -dE/d eps[a][b] for the homogeneous strain r -> r (I + eps) (row
  vectors) applied to the positions and to the lattice vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import model_format

# Rows of a positions array processed at once by the brute-force neighbour search;
# bounds its memory to a few MB per image shift for large structures.
_NEIGHBOR_BLOCK = 256


@dataclass
class Model:
    """Weights (numpy, source dtype) and configuration of a painn model file."""

    tensors: Dict[str, np.ndarray]
    hidden_features: int
    layers: int
    cutoff: float
    max_z: int
    metadata: dict
    _cache: Dict[torch.dtype, Dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def weights(self, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        """The tensors as torch tensors of ``dtype`` (converted once per dtype)."""
        if dtype not in self._cache:
            self._cache[dtype] = {name: torch.tensor(t, dtype=dtype)
                                  for name, t in self.tensors.items()}
        return self._cache[dtype]


@dataclass
class Result:
    energy: float                 # eV
    energies: np.ndarray          # [n_atoms] eV
    forces: np.ndarray            # [n_atoms][3] eV/A
    virial: Optional[np.ndarray]  # [3][3] eV, None unless asked for
    edges: int                    # directed edges j -> i


def load_model(path) -> Model:
    """Read a painn ``.safetensors`` model file (see painn.model_format)."""
    tensors, meta = model_format.load(path)
    return Model(tensors=tensors, hidden_features=meta["hidden_features"], layers=meta["layers"],
                 cutoff=float(meta["cutoff_angstrom"]), max_z=meta["max_z"], metadata=meta)


def _image_bounds(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                  cutoff: float) -> np.ndarray:
    """Largest |n_a| of an image shift that can bring two atoms within the cutoff.

    In fractional coordinates f = r . inv(C), an edge vector with |r| <= cutoff has
    |f_a| <= cutoff * |g_a|, g_a being column a of inv(C); so
    |n_a| <= (spread of f_a over the atoms) + cutoff * |g_a|. This holds for atoms given
    outside the cell too. Non-periodic lattice vectors are replaced by an orthonormal
    basis of the complement of the periodic ones: the bound holds for any basis, and the
    given vectors may be degenerate.
    """
    bounds = np.zeros(3, dtype=np.int64)
    periodic = np.flatnonzero(pbc)
    if periodic.size == 0:
        return bounds
    basis = cell.copy()
    if periodic.size < 3:
        _, _, vt = np.linalg.svd(cell[periodic])
        basis[np.flatnonzero(~pbc)] = vt[periodic.size:]
    inverse = np.linalg.inv(basis)
    frac = positions @ inverse
    spread = frac.max(axis=0) - frac.min(axis=0)
    reach = cutoff * np.linalg.norm(inverse, axis=0)
    bounds[periodic] = np.ceil(spread + reach)[periodic].astype(np.int64)
    return bounds


def neighbor_list(positions, cell, pbc,
                  cutoff: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All edges j -> i with 0 < |r_j - r_i + n . cell| <= cutoff, by brute force.

    Returns (receivers [E], sources [E], shifts [E][3] integer), sorted by receiver,
    then source, then shift.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if pbc.any():
        if cell is None:
            raise ValueError("a periodic system needs a cell")
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        if np.linalg.matrix_rank(cell[pbc]) < pbc.sum():
            raise ValueError("the periodic lattice vectors are linearly dependent")
    else:
        cell = np.zeros((3, 3))
    bounds = _image_bounds(positions, cell, pbc, cutoff)
    ranges = [np.arange(-b, b + 1) for b in bounds]
    shifts = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)

    n = len(positions)
    receivers, sources, edge_shifts = [], [], []
    for shift in shifts:
        translation = shift.astype(np.float64) @ cell
        for start in range(0, n, _NEIGHBOR_BLOCK):
            block = np.arange(start, min(start + _NEIGHBOR_BLOCK, n))
            # r[i, j] = r_j - r_i + n . cell, the same operation order as evaluate()
            r = positions[None, :, :] - positions[block, None, :] + translation
            d = np.sqrt(np.sum(r * r, axis=-1))
            i, j = np.nonzero((d > 0) & (d <= cutoff))
            receivers.append(block[i])
            sources.append(j)
            edge_shifts.append(np.broadcast_to(shift, (len(i), 3)))
    receivers = np.concatenate(receivers)
    sources = np.concatenate(sources)
    edge_shifts = np.concatenate(edge_shifts).astype(np.int64)
    order = np.lexsort((edge_shifts[:, 2], edge_shifts[:, 1], edge_shifts[:, 0], sources,
                        receivers))
    return receivers[order], sources[order], edge_shifts[order]


def _linear(x: torch.Tensor, w: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """PyTorch Linear: y = x W^T + b with W stored [out, in]."""
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def _vector_norm(v: torch.Tensor) -> torch.Tensor:
    """sqrt(sum_x v[:, x, :]^2) with gradient 0 where v is zero (spec: no epsilon).

    The inner where keeps sqrt away from 0 so that its infinite derivative never meets
    the zero that the outer where multiplies it by.
    """
    squared = torch.sum(v * v, dim=1)
    nonzero = squared > 0
    safe = torch.where(nonzero, squared, torch.ones_like(squared))
    return torch.where(nonzero, torch.sqrt(safe), torch.zeros_like(squared))


def atomic_energies(model: Model, w: Dict[str, torch.Tensor], z: torch.Tensor, r: torch.Tensor,
                    receivers: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Per-atom energies E_i [n_atoms] from atomic numbers and edge vectors r_ij [E][3]."""
    h, rc = model.hidden_features, model.cutoff
    n = z.shape[0]

    d = torch.sqrt(torch.sum(r * r, dim=1))
    u = r / (d + 1e-8)[:, None]
    phi = torch.exp(-(d[:, None] - w["rbf.centers"]) ** 2 / w["rbf.widths"] ** 2)
    # Edges at exactly d == rc are in the graph with fc = 0: their e(d) is 0 but their
    # filter w(d) is not (the MLP has biases), so they still carry messages.
    fc = torch.where(d < rc, 0.5 * (torch.cos(math.pi * d / rc) + 1), torch.zeros_like(d))
    e = phi * fc[:, None]

    s = w["embedding.weight"][z]
    v = torch.zeros((n, 3, h), dtype=s.dtype, device=s.device)
    for l in range(model.layers):
        # message
        prefix = f"interactions.{l}"
        filt = _linear(_silu(_linear(e, w, f"{prefix}.message.rbf_to_scalar.0")), w,
                       f"{prefix}.message.rbf_to_scalar.2")
        ws, wv1, wv2 = torch.split(filt, h, dim=1)
        ds = torch.zeros_like(s).index_add(0, receivers, s[sources] * ws)
        dv_edge = v[sources] * wv1[:, None, :] + u[:, :, None] * wv2[:, None, :]
        dv = torch.zeros_like(v).index_add(0, receivers, dv_edge)
        s = s + ds
        v = v + dv
        # update
        a = _linear(_silu(_linear(torch.cat([s, _vector_norm(v)], dim=1), w,
                                  f"{prefix}.update.update_mlp.0")), w,
                    f"{prefix}.update.update_mlp.2")
        a_s, a_v1, a_v2 = torch.split(a, h, dim=1)
        s = s + a_s
        if l + 1 < model.layers:
            # The last layer's vectors never reach the energy (and its mixing matrix
            # may be absent), so only earlier layers update them.
            m = w[model_format.mixing_matrix_name(l)]
            mixed = torch.einsum("xy,nyh->nxh", m, v)
            v = v * a_v1[:, None, :] + mixed * a_v2[:, None, :]

    x = _silu(_linear(s, w, "energy_head.0"))
    x = _silu(_linear(x, w, "energy_head.2"))
    return _linear(x, w, "energy_head.4")[:, 0]


def evaluate(model: Model, Z, positions, cell=None, pbc: Sequence[bool] = (False, False, False),
             dtype: torch.dtype = torch.float64, virial: bool = True,
             neighbors: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None) -> Result:
    """Energy, per-atom energies, forces, virial and edge count of one structure.

    ``positions`` [n][3] and ``cell`` [3][3] (rows = lattice vectors) in angstrom;
    ``neighbors`` is a precomputed neighbor_list() result (for timing the model alone).
    """
    z = torch.as_tensor(np.asarray(Z, dtype=np.int64).reshape(-1))
    if z.numel() and (int(z.min()) < 0 or int(z.max()) > model.max_z):
        raise ValueError(f"atomic numbers must lie in [0, {model.max_z}]")
    if neighbors is None:
        neighbors = neighbor_list(positions, cell, pbc, model.cutoff)
    receivers, sources, shifts = (torch.as_tensor(a) for a in neighbors)

    pos = torch.tensor(np.asarray(positions, dtype=np.float64).reshape(-1, 3), dtype=dtype,
                       requires_grad=True)
    lattice = torch.tensor(np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64),
                           dtype=dtype)
    inputs = [pos]
    strained_pos, strained_lattice = pos, lattice
    if virial:
        # dE/d eps at eps = 0 of the strained structure is the virial's definition.
        eps = torch.zeros((3, 3), dtype=dtype, requires_grad=True)
        deformation = torch.eye(3, dtype=dtype) + eps
        strained_pos, strained_lattice = pos @ deformation, lattice @ deformation
        inputs.append(eps)

    r = strained_pos[sources] - strained_pos[receivers] + shifts.to(dtype) @ strained_lattice
    energies = atomic_energies(model, model.weights(dtype), z, r, receivers, sources)
    energy = energies.sum()
    grads = torch.autograd.grad(energy, inputs, allow_unused=True)
    # An input that never reached the energy (no edges at all) has zero derivative.
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]

    return Result(
        energy=float(energy.detach()),
        energies=energies.detach().double().numpy(),
        forces=-grads[0].double().numpy(),
        virial=-grads[1].double().numpy() if virial else None,
        edges=int(receivers.numel()),
    )
