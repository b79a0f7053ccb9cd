"""painn-convert: the student ONNX, PyTorch checkpoints, and every rejection path."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from painn import convert, model_format

PYTHON_DIR = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PAINN_SHARED_DIR", PYTHON_DIR.parent.parent / "shared"))
STUDENT_ONNX = SHARED / "models" / "student_427k.onnx"


def small_tensors(layers=2, h=8, k=4, max_z=5, seed=0):
    """A valid float32 tensor set without the last mixing matrix (like the ONNX export)."""
    rng = np.random.default_rng(seed)
    shapes = model_format.expected_shapes(h, k, layers)
    shapes["embedding.weight"] = (max_z + 1, h)
    del shapes[model_format.mixing_matrix_name(layers - 1)]
    tensors = {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    tensors["rbf.centers"] = np.linspace(0.0, 3.5, k, dtype=np.float32)
    return tensors


def write_onnx(path, tensors):
    """An ONNX file whose initializers are ``tensors``; no nodes (only weights are read)."""
    inits = [numpy_helper.from_array(t, name) for name, t in tensors.items()]
    graph = helper.make_graph([], "weights", [], [], initializer=inits)
    onnx.save(helper.make_model(graph), str(path))
    return path


def run(argv, capsys):
    code = convert.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_student_onnx(tmp_path):
    if not STUDENT_ONNX.is_file():
        pytest.skip(f"{STUDENT_ONNX} not found (set PAINN_SHARED_DIR)")
    out = tmp_path / "student.safetensors"
    meta = convert.convert(STUDENT_ONNX, out)
    assert (meta["hidden_features"], meta["layers"], meta["radial_basis"]) == (128, 3, 20)
    assert (meta["cutoff_angstrom"], meta["max_z"], meta["elements"]) == (5.0, 100, None)
    assert meta["provenance"]["source"] == "student_427k.onnx"

    tensors, stored = model_format.load(out)
    assert stored == meta
    source = {t.name: numpy_helper.to_array(t)
              for t in onnx.load(str(STUDENT_ONNX)).graph.initializer}
    assert set(tensors) == set(source)
    assert model_format.mixing_matrix_name(2) not in tensors
    for name, tensor in tensors.items():
        assert tensor.dtype == np.float32
        np.testing.assert_array_equal(tensor, source[name])


def test_metadata_layout(tmp_path):
    tensors = small_tensors()
    out = tmp_path / "m.safetensors"
    convert.convert(write_onnx(tmp_path / "m.onnx", tensors), out, elements=["H", "B"])
    from safetensors import safe_open

    with safe_open(str(out), framework="numpy") as f:
        raw = f.metadata()
    assert list(raw) == ["painn"]
    meta = model_format.load(out)[1]
    assert list(meta) == ["format_version", "architecture", "hidden_features", "layers",
                          "radial_basis", "cutoff_angstrom", "max_z", "units", "elements",
                          "provenance"]
    assert meta["units"] == {"energy": "eV", "length": "angstrom"}
    assert meta["elements"] == ["H", "B"]
    assert meta["cutoff_angstrom"] == pytest.approx(3.5)
    assert meta["provenance"]["converter"] == "painn-convert 0.1.0"
    assert len(meta["provenance"]["source_sha256"]) == 64


def test_onnx_constants_outside_model_prefixes_are_ignored(tmp_path):
    tensors = small_tensors()
    extra = {"onnx::Gemm_42": np.ones(3, np.float32),
             "/Constant_output_0": np.zeros(1, np.float32)}
    out = tmp_path / "m.safetensors"
    convert.convert(write_onnx(tmp_path / "m.onnx", {**tensors, **extra}), out)
    assert set(model_format.load(out)[0]) == set(tensors)


def test_cutoff_override(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    code, stdout, _ = run([write_onnx(tmp_path / "m.onnx", small_tensors()), "-o", out,
                           "--cutoff", "4.25"], capsys)
    assert code == 0 and "cutoff=4.25" in stdout
    assert model_format.load(out)[1]["cutoff_angstrom"] == 4.25


def test_float64_kept(tmp_path):
    tensors = {n: t.astype(np.float64) for n, t in small_tensors().items()}
    out = tmp_path / "m.safetensors"
    convert.convert(write_onnx(tmp_path / "m.onnx", tensors), out)
    assert {t.dtype for t in model_format.load(out)[0].values()} == {np.dtype(np.float64)}


def _broken(kind):
    """(tensor set, text the error must contain) for each rejection."""
    t = small_tensors()  # h=8, k=4, layers=2
    if kind == "missing":
        del t["interactions.1.update.update_mlp.2.bias"]
        return t, "missing tensor 'interactions.1.update.update_mlp.2.bias' (expected shape [24]"
    if kind == "unknown":
        t["interactions.0.message.gate.weight"] = np.ones((8, 8), np.float32)
        return t, "unknown tensor 'interactions.0.message.gate.weight'"
    if kind == "shape":
        t["energy_head.2.weight"] = np.ones((2, 5), np.float32)
        return t, "tensor 'energy_head.2.weight' has shape [2, 5], expected [2, 4]"
    if kind == "non_finite":
        t["interactions.0.update.update_mlp.0.bias"][3] = np.inf
        return t, "tensor 'interactions.0.update.update_mlp.0.bias' has non-finite values"
    if kind == "mixing_not_last":
        del t["interactions.0.update.mixing_matrix"]
        return t, "missing tensor 'interactions.0.update.mixing_matrix' (expected shape [3, 3]"
    if kind == "hidden_not_multiple_of_4":
        t = small_tensors(h=6)
        return t, "H=6"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unknown", "shape", "non_finite", "mixing_not_last",
                                  "hidden_not_multiple_of_4"])
def test_rejections(tmp_path, capsys, kind):
    tensors, expected = _broken(kind)
    out = tmp_path / "m.safetensors"
    code, _, err = run([write_onnx(tmp_path / "m.onnx", tensors), "-o", out], capsys)
    assert code == 2
    assert err.startswith("painn-convert: error: ") and err.count("\n") == 1
    assert expected in err
    assert not out.exists()


def test_bad_elements(tmp_path, capsys):
    onnx_file = write_onnx(tmp_path / "m.onnx", small_tensors(max_z=5))
    code, _, err = run([onnx_file, "-o", tmp_path / "m.safetensors", "--elements", "H", "Na"],
                       capsys)
    assert code == 2 and "'Na' (Z=11)" in err


def test_console_entry_point_exit_code(tmp_path):
    """The real process: status 2, one line, no traceback; and torch never imported."""
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}
    bad = write_onnx(tmp_path / "bad.onnx", _broken("missing")[0])
    proc = subprocess.run([sys.executable, "-m", "painn.convert", str(bad), "-o",
                           str(tmp_path / "x.safetensors")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("painn-convert: error: missing tensor")
    assert "Traceback" not in proc.stderr

    good = write_onnx(tmp_path / "good.onnx", small_tensors())
    check = ("import sys; from painn.convert import main; code = main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    proc = subprocess.run(
        [sys.executable, "-c", check, str(good), "-o", str(tmp_path / "y.safetensors")],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("wrap", ["bare_with_model_prefix", "model_state_dict", "state_dict"])
def test_torch_checkpoints(tmp_path, wrap):
    torch = pytest.importorskip("torch", reason="torch is not installed: .pt conversion untested")
    tensors = small_tensors()
    from_onnx = tmp_path / "onnx.safetensors"
    convert.convert(write_onnx(tmp_path / "m.onnx", tensors), from_onnx)

    state = {name: torch.from_numpy(t.copy()) for name, t in tensors.items()}
    if wrap == "bare_with_model_prefix":
        checkpoint = {f"model.{name}": t for name, t in state.items()}
    else:
        checkpoint = {wrap: state, "epoch": 7}
    torch.save(checkpoint, tmp_path / "m.pt")
    from_torch = tmp_path / "torch.safetensors"
    convert.convert(tmp_path / "m.pt", from_torch)

    a, b = model_format.load(from_onnx)[0], model_format.load(from_torch)[0]
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype
        np.testing.assert_array_equal(a[name], b[name])


def test_torch_missing(tmp_path, capsys, monkeypatch):
    (tmp_path / "m.pt").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    code, _, err = run([tmp_path / "m.pt", "-o", tmp_path / "m.safetensors"], capsys)
    assert code == 2 and "needs torch" in err


def test_unsupported_input(tmp_path, capsys):
    (tmp_path / "m.h5").write_bytes(b"")
    code, _, err = run([tmp_path / "m.h5", "-o", tmp_path / "m.safetensors"], capsys)
    assert code == 2 and "unsupported input 'm.h5'" in err
