"""painn.reference against the seed reference values and the committed fixtures."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: the reference needs it")

from painn import convert, model_format, reference  # noqa: E402  (after the torch check)

PYTHON_DIR = Path(__file__).resolve().parents[1]
REPO = PYTHON_DIR.parent
SHARED = Path(os.environ.get("PAINN_SHARED_DIR", REPO.parent / "shared"))
STUDENT_ONNX = SHARED / "models" / "student_427k.onnx"
SEED_REFERENCE = SHARED / "reference" / "seed_reference_f64.json"
DATA = REPO / "tests" / "data"
SEED_TOLERANCE = 1e-8

torch.set_num_threads(1)  # the structures are small; stay off the other cores


def load_json(path):
    return json.loads(Path(path).read_text())


def max_errors(result, case):
    return {
        "energy": abs(result.energy - case["energy"]),
        "forces": float(np.max(np.abs(result.forces - np.array(case["forces"])))),
        "virial": float(np.max(np.abs(result.virial - np.array(case["virial"])))),
    }


@pytest.fixture(scope="module")
def tiny_model():
    return reference.load_model(DATA / "tiny_model.safetensors")


@pytest.fixture(scope="module")
def tiny_cases():
    return load_json(DATA / "tiny_reference.json")


def test_seed_reference(tmp_path):
    if not (STUDENT_ONNX.is_file() and SEED_REFERENCE.is_file()):
        pytest.skip(f"{STUDENT_ONNX} or {SEED_REFERENCE} not found (set PAINN_SHARED_DIR)")
    convert.convert(STUDENT_ONNX, tmp_path / "student.safetensors")
    model = reference.load_model(tmp_path / "student.safetensors")
    for name, case in load_json(SEED_REFERENCE).items():
        periodic = case["cell"] is not None
        result = reference.evaluate(model, case["Z"], case["pos"], case["cell"], [periodic] * 3)
        errors = max_errors(result, case)
        print(f"{name}: edges {result.edges}, max abs errors {errors}")
        assert result.edges == case["edges"], name
        assert max(errors.values()) <= SEED_TOLERANCE, (name, errors)


def test_fixtures_reproduce(tiny_model, tiny_cases):
    for name, case in tiny_cases.items():
        result = reference.evaluate(tiny_model, case["Z"], case["pos"], case["cell"], case["pbc"])
        errors = max_errors(result, case)
        errors["energies"] = float(np.max(np.abs(result.energies - np.array(case["energies"]))))
        assert result.edges == case["edges"], name
        assert max(errors.values()) <= case["tolerance"], (name, errors)


def test_fixtures_are_current(tiny_cases):
    """The committed files are what make_fixtures.py generates now (inputs and weights)."""
    spec = importlib.util.spec_from_file_location("make_fixtures",
                                                  PYTHON_DIR / "scripts" / "make_fixtures.py")
    make_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixtures)

    tensors, _ = model_format.load(DATA / "tiny_model.safetensors")
    fresh = make_fixtures.make_model(np.random.default_rng(make_fixtures.SEED))
    assert set(tensors) == set(fresh)
    for name in tensors:
        np.testing.assert_array_equal(tensors[name], fresh[name])
    cases = make_fixtures.make_cases()
    assert list(cases) == list(tiny_cases)
    for name, case in cases.items():
        stored = tiny_cases[name]
        assert stored["Z"] == case["Z"].tolist() and stored["pbc"] == case["pbc"]
        np.testing.assert_array_equal(np.array(stored["pos"]), case["pos"])
        if case["cell"] is None:
            assert stored["cell"] is None
        else:
            np.testing.assert_array_equal(np.array(stored["cell"]), case["cell"])


def test_special_cases(tiny_model, tiny_cases):
    lone = tiny_cases["atom_without_neighbours"]
    assert lone["forces"][-1] == [0.0, 0.0, 0.0]
    single = tiny_cases["isolated_atom"]
    assert single["edges"] == 0 and single["forces"] == [[0.0, 0.0, 0.0]]
    assert np.all(np.array(single["virial"]) == 0)
    assert single["energy"] == single["energies"][0]


def test_virial_is_strain_derivative(tiny_model, tiny_cases):
    """Central differences of E under r -> r (I + eps) for positions and cell."""
    case = tiny_cases["triclinic_box"]
    pos, cell = np.array(case["pos"]), np.array(case["cell"])
    step = 1e-5
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = step
            energy = [reference.evaluate(tiny_model, case["Z"], pos @ (np.eye(3) + sign * eps),
                                         cell @ (np.eye(3) + sign * eps), case["pbc"],
                                         virial=False).energy for sign in (1, -1)]
            numeric[a, b] = -(energy[0] - energy[1]) / (2 * step)
    np.testing.assert_allclose(numeric, case["virial"], atol=1e-7)


def test_unwrapped_atoms_change_nothing(tiny_model, tiny_cases):
    case = tiny_cases["triclinic_box"]
    pos, cell = np.array(case["pos"]), np.array(case["cell"])
    wrapped = ((pos @ np.linalg.inv(cell)) % 1.0) @ cell
    result = reference.evaluate(tiny_model, case["Z"], wrapped, cell, case["pbc"])
    assert result.edges == case["edges"]
    assert abs(result.energy - case["energy"]) < 1e-12
    np.testing.assert_allclose(result.forces, case["forces"], atol=1e-12)


def test_neighbor_list_matches_ase(tiny_cases):
    neighborlist = pytest.importorskip("ase.neighborlist", reason="ase is not installed")
    for name, case in tiny_cases.items():
        cell = np.zeros((3, 3)) if case["cell"] is None else np.array(case["cell"])
        pos = np.array(case["pos"])
        i, j, shifts = reference.neighbor_list(pos, case["cell"], case["pbc"], 4.0)
        ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))
        ai, aj, ashift = neighborlist.primitive_neighbor_list(
            "ijS", case["pbc"], cell, pos, 4.0, self_interaction=False)
        theirs = sorted(zip(ai.tolist(), aj.tolist(), map(tuple, ashift.tolist())))
        assert ours == theirs, name
