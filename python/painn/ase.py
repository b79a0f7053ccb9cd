"""ASE calculator for painn models.

    from ase.build import molecule
    from painn.ase import PaiNNCalculator

    atoms = molecule("H2O")
    atoms.calc = PaiNNCalculator("student.safetensors", device="auto", precision="f32")
    print(atoms.get_potential_energy(), atoms.get_forces())

One engine calculator (``painn._engine.Calculator``) is created with the ASE calculator and
kept: each later calculation is one engine call, and the engine reuses its neighbour list
through the skin. It is recreated only when ``model``,
``device``, ``precision`` or ``skin`` change (``calc.set(...)``).

Errors from the engine (unknown element, unreadable model file, non-finite positions,
impossible cell, no GPU, ...) are raised as :class:`painn.PainnError` carrying the engine's
status code and message.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from ._engine import Calculator as EngineCalculator
from ._engine import Model, PainnError

__all__ = ["PaiNNCalculator", "PainnError", "Model"]


def _state_key(atoms) -> tuple:
    """The bytes of what the model depends on: equal keys mean nothing changed."""
    return (atoms.arrays["positions"].tobytes(), atoms.arrays["numbers"].tobytes(),
            atoms.cell.array.tobytes(), np.asarray(atoms.pbc).tobytes())


def _close(a, b, tol) -> bool:
    """Equal within `tol` (absolute), as ASE's compare_atoms decides."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if np.array_equal(a, b):
        return True
    if a.dtype == bool or b.dtype == bool:
        return False
    return bool(np.all(np.abs(a - b) <= tol))


class PaiNNCalculator(Calculator):
    """PaiNN energy, forces, stress and per-atom energies through the painn engine.

    ``model``: a model file (``.safetensors`` from painn-convert) or a loaded
    :class:`painn.Model` (shared, e.g. by several calculators).
    ``device``: "auto" (the first usable GPU, else the CPU; None means "auto"), "cpu", "cuda"
    or "cuda:N".
    ``precision``: "f32" (fast; the GPU runs f32) or "f64" (the CPU reference).
    ``skin``: neighbour-list skin in Angstrom (None: the engine's default, 1 A).

    Works for any ``atoms.pbc``; the cell rows are passed as they are (a non-periodic axis
    may have a zero lattice vector) and positions need not be wrapped. ``stress`` (eV/A^3,
    Voigt xx yy zz yz xz xy, ASE's sign: -W/V symmetrised) needs all three axes periodic.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]
    default_parameters = {"device": "auto", "precision": "f32", "skin": None}
    nolabel = True

    def __init__(self, model: Union[str, os.PathLike, Model], device: Optional[str] = "auto",
                 precision: str = "f32", skin: Optional[float] = None, **kwargs):
        self._model = self._load(model)
        self.engine: Optional[EngineCalculator] = None
        self._state: Optional[tuple] = None  # _state_key of the last calculation
        super().__init__(device=device, precision=precision, skin=skin, **kwargs)
        self._engine()  # a bad device or precision fails here, with the engine's message

    @staticmethod
    def _load(model) -> Model:
        return model if isinstance(model, Model) else Model(model)

    @property
    def model(self) -> Model:
        return self._model

    def set(self, **kwargs):
        """Changes parameters; a new model, device, precision or skin drops the engine
        calculator (and the results); a new one is created on the next calculation."""
        changed = {}
        if "model" in kwargs:
            model = kwargs.pop("model")
            if model is not self._model:
                self._model = self._load(model)
                changed["model"] = model
        changed.update(super().set(**kwargs))
        if changed:
            self._drop_engine()
            self.reset()
        return changed

    def _drop_engine(self):
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def _engine(self) -> EngineCalculator:
        if self.engine is None:
            p = self.parameters
            self.engine = EngineCalculator(self._model, device=p["device"], precision=p["precision"],
                                           skin=p["skin"])
        return self.engine

    @property
    def device(self) -> str:
        """The device the engine runs on ("cpu", or the GPU's name)."""
        return self._engine().device

    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation, among what the model depends on
        (positions, numbers, cell, pbc; not charges or magnetic moments). Same answer as
        ASE's `compare_atoms` for those, at a fraction of its cost (it dominates an MD step of
        a small molecule otherwise)."""
        old = self.atoms
        if old is None:
            return list(all_changes)
        if self._state is not None and _state_key(atoms) == self._state:
            return []  # the same bytes: ASE asks again for each property of one MD step
        changes = []
        if len(old) != len(atoms):
            return ["positions", "numbers"] + [c for c in ("cell", "pbc") if not _close(
                getattr(old, c)[:], getattr(atoms, c)[:], tol)]
        for name, a, b in (("positions", old.positions, atoms.positions),
                           ("numbers", old.numbers, atoms.numbers),
                           ("cell", old.cell.array, atoms.cell.array),
                           ("pbc", old.pbc, atoms.pbc)):
            if not _close(a, b, tol):
                changes.append(name)
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        pbc = np.asarray((atoms if atoms is not None else self.atoms).pbc, dtype=bool)
        if "stress" in properties and not pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs all three axes periodic (pbc is {pbc.tolist()})")
        self._state = None
        if atoms is not None:
            old = self.atoms
            if old is not None and len(old) == len(atoms):
                # What ASE's Calculator.calculate does with atoms.copy(), for what the model
                # reads, in place: a copy of the whole Atoms is most of an MD step's overhead.
                old.arrays["positions"][:] = atoms.arrays["positions"]
                old.arrays["numbers"][:] = atoms.arrays["numbers"]
                old.cell.array[:] = atoms.cell.array
                old.pbc[:] = atoms.pbc
            else:
                self.atoms = atoms.copy()
        atoms = self.atoms
        cell = atoms.cell.array
        out = self._engine().compute(atoms.numbers, atoms.positions, cell, pbc,
                                     energies="energies" in properties)
        self.results = {"energy": out.energy, "free_energy": out.energy, "forces": out.forces}
        if pbc.all():
            w = out.virial
            stress = -0.5 * (w + w.T) / abs(np.linalg.det(cell))
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
        if out.energies is not None:
            self.results["energies"] = out.energies
        self._state = _state_key(atoms)
