"""painn.ase.PaiNNCalculator and the ctypes bindings (painn._engine), on the CPU.

Checks, in float64 unless said otherwise: agreement with `painn eval --per-atom` (energy,
forces, per-atom energies, virial, stress) for a molecule, a triclinic periodic box, a slab
and every other pbc combination, with unwrapped positions; agreement with LAMMPS (pair_style
painn) on a triclinic water box; forces and stress against ASE's finite differences; NVE
energy conservation with the trained model; a BFGS relaxation; errors carrying the engine's
message; one engine calculator reused across calls.

The library is the one bundled in the installed package, or (source checkout, as pytest runs
here with `pythonpath = .`) target/release/libpainn.so; PAINN_LIBRARY overrides both.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ase = pytest.importorskip("ase")
from ase import Atoms, units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402

from painn import _engine  # noqa: E402
from painn._engine import PainnError  # noqa: E402
from painn.ase import PaiNNCalculator  # noqa: E402

from test_lammps import _require, relative, run0, water_box, write_data  # noqa: E402
import test_lammps  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "tests/data/tiny_model.safetensors"
TOLERANCE = 1e-10


def _cli():
    return Path(os.environ.get("PAINN_CLI", REPO / "target/release/painn"))


def _student_model():
    model = Path(os.environ.get("PAINN_STUDENT_MODEL", REPO / "target/models/student_427k.safetensors")).resolve()
    if not model.exists():
        reason = f"no trained model at {model} (set PAINN_STUDENT_MODEL; needs the training project's files)"
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    return model


def _report(name, text):
    """Prints a result line and keeps it in target/ase-report.txt (one line per name)."""
    print(text, file=sys.stderr)
    path = REPO / "target" / "ase-report.txt"
    path.parent.mkdir(exist_ok=True)
    lines = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(": ")
            lines[key] = value
    lines[name] = text
    path.write_text("".join(f"{k}: {v}\n" for k, v in sorted(lines.items())))


def calculator(model=TINY_MODEL, **kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("precision", "f64")
    return PaiNNCalculator(str(model), **kwargs)


def painn_eval(directory: Path, atoms: Atoms, model=TINY_MODEL):
    """`painn eval --per-atom` (float64, CPU) on exactly these coordinates."""
    if not _cli().exists():
        pytest.skip(f"no painn CLI at {_cli()} (cargo build --release)")
    flags = " ".join("T" if p else "F" for p in atoms.pbc)
    header = f'Properties=Z:I:1:pos:R:3 pbc="{flags}"'
    if atoms.cell.any():
        header = 'Lattice="' + " ".join(repr(float(v)) for v in atoms.cell.array.ravel()) + '" ' + header
    lines = [str(len(atoms)), header]
    for number, r in zip(atoms.numbers, atoms.positions):
        lines.append(f"{int(number)} {float(r[0])!r} {float(r[1])!r} {float(r[2])!r}")
    path = directory / "structure.xyz"
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([str(_cli()), "eval", "--model", str(model), "--per-atom", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _unwrap(atoms: Atoms, seed=0):
    """Moves atoms by random whole lattice vectors along the periodic axes."""
    rng = np.random.default_rng(seed)
    shifts = rng.integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
    atoms.positions = atoms.positions + shifts @ atoms.cell.array
    return atoms


def organic_molecule():
    """Ethanol and methylamine side by side (H, C, N, O), no cell."""
    a = molecule("CH3CH2OH")
    b = molecule("H3CNH2")
    b.translate([2.8, 1.5, 0.7])
    atoms = a + b
    atoms.rattle(0.05, seed=1)
    atoms.translate([-7.0, 3.0, 11.0])  # far from the origin: nothing assumes a box
    return atoms


def triclinic_box(nx=3, seed=3):
    z, positions, cell = water_box(nx, seed=seed)
    return Atoms(numbers=z, positions=positions, cell=cell, pbc=True)


def slab():
    """Water on a 2D lattice, z open: a cell with vacuum along z, atoms below z = 0 too."""
    atoms = triclinic_box()
    cell = atoms.cell.array.copy()
    cell[2] = [0.0, 0.0, 25.0]
    atoms.set_cell(cell, scale_atoms=False)
    atoms.pbc = [True, True, False]
    atoms.translate([0.0, 0.0, -3.0])
    return atoms


STRUCTURES = {
    "molecule": lambda: organic_molecule(),
    "triclinic box": lambda: _unwrap(triclinic_box()),
    "slab (T T F)": lambda: _unwrap(slab(), seed=1),
}
for _flags in ["TFF", "FTF", "FFT", "FTT", "TFT"]:
    STRUCTURES[f"box with pbc {_flags}"] = (lambda f: lambda: _unwrap(
        Atoms(triclinic_box(2, seed=4), pbc=[c == "T" for c in f]), seed=2))(_flags)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_painn_eval(tmp_path, name):
    atoms = STRUCTURES[name]()
    reference = painn_eval(tmp_path, atoms)
    atoms.calc = calculator()
    energy = atoms.get_potential_energy()
    errors = {
        "energy": relative(energy, reference["energy"]),
        "forces": relative(atoms.get_forces(), reference["forces"]),
        "energies": relative(atoms.get_potential_energies(), reference["energies"]),
    }
    assert atoms.get_potential_energy(force_consistent=True) == energy
    if atoms.pbc.all():
        errors["stress"] = relative(atoms.get_stress(), reference["stress"])
    else:
        with pytest.raises(PropertyNotImplementedError, match="periodic"):
            atoms.get_stress()
    if "virial" in reference:  # the bindings' virial (ASE shows it only as stress)
        engine = atoms.calc.engine.compute(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
        errors["virial"] = relative(engine.virial, reference["virial"])
    _report(f"painn eval agreement, {name}", ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    for key, error in errors.items():
        assert error <= TOLERANCE, (key, error)


def test_matches_lammps(tmp_path):
    """The same periodic triclinic water box through LAMMPS (run 0) and through ASE."""
    _require()
    z, positions, cell = water_box(3, seed=6)
    write_data(tmp_path / "system.data", z, positions, cell)
    lmp = run0(tmp_path, TINY_MODEL)
    atoms = _unwrap(Atoms(numbers=z, positions=positions, cell=cell, pbc=True), seed=5)
    atoms.calc = calculator()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    tolerance = max(TOLERANCE, test_lammps.TOLERANCE)  # 2e-5 when LAMMPS runs on the GPU in f32
    errors = {"energy": relative(lmp["energy"], energy), "forces": relative(lmp["forces"], forces)}
    # LAMMPS's pressure tensor at rest is W/V in bar; ASE's stress is -sym(W)/V in eV/A^3.
    voigt_lammps = np.array([lmp[k] for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
    stress = atoms.get_stress()
    errors["stress (diagonal)"] = relative(-voigt_lammps[:3] / test_lammps.NKTV2P, stress[:3])
    _report("LAMMPS agreement (triclinic water box, 81 atoms)", ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    for key, error in errors.items():
        assert error <= max(tolerance, 1e-9 if "stress" in key else 0), (key, error)


def test_forces_and_stress_are_derivatives_of_the_energy():
    from ase.calculators import fd

    atoms = triclinic_box(2, seed=9)
    atoms.rattle(0.05, seed=2)
    atoms.calc = calculator()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    numerical_forces = fd.calculate_numerical_forces(atoms, eps=1e-4)
    numerical_stress = fd.calculate_numerical_stress(atoms, eps=1e-5)
    errors = {"forces": relative(forces, numerical_forces), "stress": relative(stress, numerical_stress)}
    _report("finite differences (water box, 24 atoms)", ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert errors["forces"] <= 1e-6
    assert errors["stress"] <= 1e-6
    # Sign: a compressed box pushes outwards, i.e. negative stress in ASE's convention.
    small = triclinic_box(2, seed=9)
    small.set_cell(small.cell.array * 0.8, scale_atoms=True)
    small.calc = calculator()
    assert np.allclose(small.get_stress(), fd.calculate_numerical_stress(small, eps=1e-5), rtol=1e-6,
                       atol=1e-6 * np.abs(small.get_stress()).max())


def _water():
    return Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.24, 0.927, 0.0]])


@pytest.mark.filterwarnings("ignore:Use thermalize_momenta:DeprecationWarning")
@pytest.mark.parametrize("precision", ["f64", "f32"])
def test_nve_energy_conservation(precision):
    """VelocityVerlet, a water molecule with the trained model, 0.25 fs, 1000 steps, from its
    relaxed geometry at 300 K (every pair stays far inside the 5 A cutoff, where the trained
    model is discontinuous; from the experimental geometry the molecule starts ~0.45 eV above
    the model's minimum and stretches to 4 A)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    model = _student_model()
    atoms = _water()
    atoms.calc = calculator(model, precision=precision)
    assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1234))
    Stationary(atoms)
    ZeroRotation(atoms)
    dt_fs, steps = 0.25, 1000
    dynamics = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    engine_calls, engines, totals, distances = [0], set(), [], []
    compute = atoms.calc._engine().compute

    def counted(*args, **kwargs):
        engine_calls[0] += 1
        return compute(*args, **kwargs)

    atoms.calc.engine.compute = counted
    atoms.get_forces()  # cached from the relaxation: velocities alone do not invalidate it

    def record():
        totals.append(atoms.get_total_energy())
        engines.add(id(atoms.calc.engine))
        distances.append(atoms.get_all_distances().max())

    dynamics.attach(record, interval=1)
    dynamics.run(steps)
    time_ps = np.arange(len(totals)) * dt_fs / 1000
    totals = np.array(totals)
    fit = np.polyfit(time_ps, totals, 1)
    drift = fit[0] / len(atoms)
    fluctuation = float(np.std(totals - np.polyval(fit, time_ps))) / len(atoms)
    kinetic = atoms.get_kinetic_energy() / len(atoms)
    _report(f"NVE water molecule {precision}",
            f"drift {drift:+.2e} eV/atom/ps over {steps} steps of {dt_fs} fs, fluctuation about the fit "
            f"{fluctuation:.1e} eV/atom, max |E - E0| {np.abs(totals - totals[0]).max():.1e} eV, "
            f"largest distance {max(distances):.2f} A, {engine_calls[0]} engine calls")
    assert max(distances) < 3.0
    assert kinetic > 0.001  # it moved
    assert abs(drift) < 5e-3
    assert fluctuation < 2e-3
    # One engine calculator for the whole run; one engine call per MD step.
    assert len(engines) == 1
    assert engine_calls[0] == steps


def test_bfgs_relaxation():
    """The trained model's water: O-H 1.10 and 1.23 A, H-O-H 98.6 degrees (the model is not
    rotation-invariant, so the two bonds differ and the minimum depends on the orientation)."""
    from ase.optimize import BFGS

    model = _student_model()
    atoms = _water()
    atoms.rattle(0.05, seed=3)
    atoms.calc = calculator(model)
    optimizer = BFGS(atoms, logfile=None)
    converged = optimizer.run(fmax=0.01, steps=500)
    fmax = np.linalg.norm(atoms.get_forces(), axis=1).max()
    oh = sorted([atoms.get_distance(0, 1), atoms.get_distance(0, 2)])
    angle = atoms.get_angle(1, 0, 2)
    _report("BFGS water molecule (trained model)",
            f"converged={converged} in {optimizer.get_number_of_steps()} steps, fmax {fmax:.1e} eV/A, "
            f"E {atoms.get_potential_energy():.6f} eV, O-H {oh[0]:.4f}/{oh[1]:.4f} A, H-O-H {angle:.2f} deg")
    assert converged
    assert fmax < 0.01
    assert 0.9 < oh[0] <= oh[1] < 1.3 and 90 < angle < 115


def test_unknown_element():
    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.4, 0, 0]])  # the tiny model stops at Ne
    atoms.calc = calculator()
    with pytest.raises(PainnError, match="atomic number 11, outside the model's range 1..=10") as error:
        atoms.get_potential_energy()
    assert error.value.status == _engine.INVALID_ARGUMENT
    # The calculator stays usable after a refused call.
    water = _water()
    water.calc = atoms.calc
    assert np.isfinite(water.get_potential_energy())


def test_bad_model_files(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(PainnError, match="garbage.safetensors") as error:
        PaiNNCalculator(garbage)
    assert error.value.status == _engine.MODEL_ERROR
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(TINY_MODEL.read_bytes()[:1000])
    with pytest.raises(PainnError, match="truncated.safetensors") as error:
        PaiNNCalculator(truncated)
    assert error.value.status == _engine.MODEL_ERROR
    with pytest.raises(PainnError, match="missing.safetensors") as error:
        PaiNNCalculator(tmp_path / "missing.safetensors")
    assert error.value.status == _engine.IO_ERROR
    with pytest.raises(PainnError, match="model junk") as error:
        _engine.Model.from_bytes(b"\0" * 64, name="junk")


def test_bad_positions_and_cells():
    atoms = _water()
    atoms.calc = calculator()
    atoms.positions[1, 2] = np.nan
    with pytest.raises(PainnError, match="non-finite value in the position of atom 1") as error:
        atoms.get_forces()
    assert error.value.status == _engine.INVALID_ARGUMENT
    atoms = _water()
    atoms.pbc = [True, False, False]  # periodic along a zero lattice vector
    atoms.calc = calculator()
    with pytest.raises(PainnError, match="lattice vector 0 is zero but axis 0 is periodic"):
        atoms.get_potential_energy()
    with pytest.raises(PainnError, match="precision"):
        calculator(precision="f16")
    with pytest.raises(PainnError, match="device"):
        calculator(device="tpu")


def test_atomic_numbers_must_be_integers_in_range():
    """Nothing is rounded, wrapped or taken as hydrogen: 29.7, 2**32 + 29, True, NaN and
    non-numbers are refused with a message naming the atom; 8.0 is the integer 8."""
    engine = _engine.Calculator(_engine.Model(TINY_MODEL), device="cpu", precision="f64")
    water = _water()
    positions = water.positions
    expected = engine.compute(water.numbers, positions).energy
    cases = {
        "29.7": ([29.7, 1, 1], ValueError, "atomic number 29.7 of atom 0 is not an integer"),
        "2**32 + 29": ([8, 2**32 + 29, 1], ValueError,
                       r"atomic number 4294967325 of atom 1 is out of range \(atomic numbers are 32-bit "
                       r"integers; the model takes 1 to 10\)"),
        "2**70": ([8, 1, 2**70], ValueError, "atomic number 1180591620717411303424 of atom 2 is out of range"),
        "-2**40 (int64 array)": (np.array([8, 1, -2**40]), ValueError, "of atom 2 is out of range"),
        "True in a list": ([8, True, 1], TypeError, "not booleans"),
        "boolean array": (np.array([True, True, True]), TypeError, "not booleans"),
        "NaN": ([8, float("nan"), 1], ValueError, "atomic number nan of atom 1 is not an integer"),
        "inf": (np.array([8.0, 1.0, np.inf]), ValueError, "atomic number inf of atom 2 is not an integer"),
        "strings": (["8", "1", "1"], TypeError, "must be integers"),
        "None": ([8, 1, None], TypeError, "atomic number None of atom 2 is not an integer"),
        "2-D": ([[8, 1, 1]], ValueError, "one-dimensional"),
    }
    for name, (numbers, kind, message) in cases.items():
        with pytest.raises(kind, match=message):
            engine.compute(numbers, positions)
    # Integral values of any numeric type are the integers they equal.
    for numbers in ([8.0, 1.0, 1.0], np.array([8, 1, 1], dtype=np.uint8), np.array([8, 1, 1], dtype=np.int64),
                    [np.int16(8), 1, 1]):
        assert engine.compute(numbers, positions).energy == expected


def test_positions_cells_and_flags_are_checked():
    engine = _engine.Calculator(_engine.Model(TINY_MODEL), device="cpu", precision="f64")
    water = _water()
    for positions, kind, message in [
            (water.positions.astype(complex), TypeError, "positions must be real numbers, not complex128"),
            (water.positions.astype(str), TypeError, "positions must be real numbers"),
            (np.ones((3, 3), dtype=bool), TypeError, "positions must be real numbers, not bool"),
            (water.positions[:2], ValueError, r"positions must have shape \(3, 3\)"),
            (water.positions.ravel(), ValueError, r"positions must have shape \(3, 3\)")]:
        with pytest.raises(kind, match=message):
            engine.compute(water.numbers, positions)
    with pytest.raises(TypeError, match="cell must be real numbers"):
        engine.compute(water.numbers, water.positions, np.eye(3, dtype=complex) * 10, pbc=True)
    with pytest.raises(ValueError, match="pbc must be one flag or three"):
        engine.compute(water.numbers, water.positions, np.eye(3) * 10, pbc=[True, False])
    # pbc=True, as ASE accepts it: all three axes.
    cell = np.eye(3) * 10
    assert (engine.compute(water.numbers, water.positions, cell, pbc=True).energy
            == engine.compute(water.numbers, water.positions, cell, pbc=[True, True, True]).energy)
    assert (engine.compute(water.numbers, water.positions, cell, pbc=False).energy
            == engine.compute(water.numbers, water.positions).energy)
    atoms = Atoms(water, cell=cell, pbc=True)
    atoms.calc = calculator()
    assert atoms.get_potential_energy() == engine.compute(water.numbers, water.positions, cell, pbc=True).energy


def test_device_none_means_auto():
    engine = _engine.Calculator(_engine.Model(TINY_MODEL), device=None, precision=None)
    assert engine.requested_device == "auto" and engine.precision == "f32"
    calc = PaiNNCalculator(TINY_MODEL, device=None, precision="f64")
    assert calc.engine.requested_device == "auto"
    if _engine.cuda_device_count() == 0:
        assert calc.device == "cpu"
    assert np.isfinite(calc.get_potential_energy(_water()))
    with pytest.raises(TypeError, match="device must be a string"):
        _engine.Calculator(_engine.Model(TINY_MODEL), device=0)


def test_model_elements():
    model = _engine.Model(TINY_MODEL)
    assert model.elements == tuple(range(1, 11))  # the tiny model's file lists H to Ne


def test_one_engine_calculator_between_calls():
    atoms = _water()
    calc = calculator()
    atoms.calc = calc
    atoms.get_potential_energy()
    engine = calc.engine
    for step in range(5):
        atoms.positions[0, 0] += 0.01
        atoms.get_forces()
        assert calc.engine is engine
    # Other atoms, other cell: same engine.
    box = triclinic_box(2)
    box.calc = calc
    box.get_stress()
    assert calc.engine is engine
    # Same parameters: kept; a new precision, device, skin or model: recreated.
    calc.set(precision="f64", device="cpu")
    assert calc.engine is engine
    before = box.get_potential_energy()
    calc.set(precision="f32")
    assert calc.engine is None
    after = box.get_potential_energy()
    assert calc.engine is not engine and calc.engine.precision == "f32"
    assert abs(after - before) <= 1e-5 * abs(before)
    engine = calc.engine
    calc.set(skin=0.5)
    box.get_potential_energy()
    assert calc.engine is not engine and calc.engine.skin == 0.5
    model = _engine.Model(TINY_MODEL)
    calc.set(model=model)
    box.get_potential_energy()
    assert calc.model is model and calc.engine.model is model


def test_shared_model_and_per_atom_outputs():
    model = _engine.Model(TINY_MODEL)
    assert model.cutoff == 4.0 and model.layers == 2 and model.max_z == 10
    first = PaiNNCalculator(model, device="cpu", precision="f64")
    second = PaiNNCalculator(model, device="cpu", precision="f64")
    atoms = _unwrap(triclinic_box(2, seed=7))
    e1 = first.get_potential_energy(atoms)
    e2 = second.get_potential_energy(atoms)
    assert e1 == e2
    assert first.device == "cpu"
    # The bindings: per-atom energies and virials sum to the totals.
    engine = _engine.Calculator(model, device="cpu", precision="f64")
    out = engine.compute(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, energies=True,
                         atom_virials=True)
    assert out.energy == e1
    assert out.forces.shape == (len(atoms), 3) and out.atom_virials.shape == (len(atoms), 3, 3)
    assert abs(out.energies.sum() - out.energy) <= 1e-12 * abs(out.energy)
    assert np.allclose(out.atom_virials.sum(axis=0), out.virial, rtol=0, atol=1e-12 * np.abs(out.virial).max())
    # A calculator keeps its model alive: closing the user's handle does not matter.
    del model
    assert engine.compute(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc).energy == e1
    engine.close()
    with pytest.raises(ValueError, match="closed"):
        engine.compute(atoms.numbers, atoms.positions)
    with pytest.raises(ValueError, match="positions must have shape"):
        first.engine.compute([8, 1], np.zeros((3, 3)))
    assert _engine.version() == "0.1.0" and _engine.abi_version() == _engine.ABI_VERSION


def test_reused_calculator_follows_every_change():
    """The calculator keeps its last atoms in place (no copy per MD step) and skips the check
    when nothing changed: in-place moves, another Atoms object of the same size, new cells
    and pbc, and moving back all give a fresh calculator's results, and calc.atoms holds the
    last calculation's positions, numbers, cell and pbc (not a view of the user's atoms)."""
    calc = calculator()
    box = triclinic_box(2)

    def fresh(atoms):
        other = calculator()
        return other.get_potential_energy(atoms), other.get_forces(atoms)

    def check(atoms, name):
        energy, forces = calc.get_potential_energy(atoms), calc.get_forces(atoms)
        expected = fresh(atoms)
        assert energy == expected[0] and np.array_equal(forces, expected[1]), name
        for got, want in ((calc.atoms.positions, atoms.positions), (calc.atoms.numbers, atoms.numbers),
                          (calc.atoms.cell.array, atoms.cell.array), (calc.atoms.pbc, atoms.pbc)):
            assert np.array_equal(got, want), name
        assert calc.atoms.positions is not atoms.positions, name

    check(box, "first")
    start = box.positions.copy()
    box.positions[4, 2] += 0.05
    check(box, "moved in place")
    other = triclinic_box(2)
    other.positions += 0.01
    check(other, "another Atoms object")
    box.positions[:] = start
    check(box, "moved back")
    box.set_cell(box.cell.array * 1.01, scale_atoms=True)
    check(box, "cell")
    box.pbc = [True, True, False]
    check(box, "pbc")
    box.numbers[0] = 1 if box.numbers[0] == 8 else 8
    check(box, "element")


def test_check_state_agrees_with_ase():
    """The calculator's fast check_state gives ASE's compare_atoms answer for what the
    model depends on."""
    from ase.calculators.calculator import compare_atoms

    calc = calculator()
    box = triclinic_box(2)
    calc.get_potential_energy(box)
    relevant = {"positions", "numbers", "cell", "pbc"}
    variants = {"same": lambda a: None,
                "tiny move": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-16),
                "move": lambda a: a.positions.__setitem__((3, 1), a.positions[3, 1] + 1e-9),
                "element": lambda a: a.numbers.__setitem__(1, 8),
                "cell": lambda a: a.set_cell(a.cell.array * 1.001),
                "pbc": lambda a: setattr(a, "pbc", [True, False, True]),
                "fewer atoms": lambda a: a.pop(),
                "charges": lambda a: a.set_initial_charges(np.ones(len(a)))}
    for name, change in variants.items():
        atoms = box.copy()
        change(atoms)
        expected = set(compare_atoms(calc.atoms, atoms)) & relevant
        assert set(calc.check_state(atoms)) == expected, name
    assert calc.check_state(box) == []
    assert set(PaiNNCalculator(TINY_MODEL, device="cpu").check_state(box)) >= relevant
