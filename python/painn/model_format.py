"""The painn model file: the Python side of the contract with the Rust loader.

A model is one ``.safetensors`` file holding the student PaiNN tensors under the
names of ``shared/spec/student-painn.md`` (no ``model.`` prefix), all float32 or all
float64, and exactly one metadata entry, ``"painn"``, whose value is a JSON object::

    {"format_version": 1, "architecture": "painn-student",
     "hidden_features": H, "layers": L, "radial_basis": K,
     "cutoff_angstrom": rc, "max_z": max_z,
     "units": {"energy": "eV", "length": "angstrom"},
     "elements": null | ["H", "C", ...],
     "provenance": {"source": ..., "source_sha256": ..., "converter": "painn-convert 0.1.0"}}

Only the last layer's ``mixing_matrix`` may be absent: its vector output never reaches
the energy, and the ONNX export drops it.
"""

from __future__ import annotations

import json
import os
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import __version__

FORMAT_VERSION = 1
ARCHITECTURE = "painn-student"
METADATA_KEY = "painn"
CONVERTER = f"painn-convert {__version__}"
UNITS = {"energy": "eV", "length": "angstrom"}
# First name component of every model tensor; used to tell weights from other
# tensors that may sit in the same source file.
MODEL_PREFIXES = ("embedding.", "rbf.", "interactions.", "energy_head.")
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Chemical symbols indexed by atomic number (index 0 is unused).
CHEMICAL_SYMBOLS = ["X"] + """
    H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn
    Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce
    Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn
    Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl
    Mc Lv Ts Og
""".split()

_LAYER_NAME = re.compile(r"^interactions\.(\d+)\.")


class ModelFormatError(ValueError):
    """A tensor set or model file that does not follow the painn model format."""


@dataclass(frozen=True)
class Hyperparameters:
    """Sizes read from the tensor shapes (never stored separately from them)."""

    hidden_features: int
    layers: int
    radial_basis: int
    max_z: int


def mixing_matrix_name(layer: int) -> str:
    return f"interactions.{layer}.update.mixing_matrix"


def expected_shapes(h: int, k: int, layers: int) -> Dict[str, Optional[Tuple[int, ...]]]:
    """Every tensor of the architecture with its shape, in the spec's order."""
    shapes = {
        "embedding.weight": None,  # [max_z + 1, H]: its row count is free
        "rbf.centers": (k,),
        "rbf.widths": (k,),
    }
    for l in range(layers):
        msg = f"interactions.{l}.message.rbf_to_scalar"
        upd = f"interactions.{l}.update"
        shapes.update({
            f"{msg}.0.weight": (h, k),
            f"{msg}.0.bias": (h,),
            f"{msg}.2.weight": (3 * h, h),
            f"{msg}.2.bias": (3 * h,),
            f"{upd}.update_mlp.0.weight": (h, 2 * h),
            f"{upd}.update_mlp.0.bias": (h,),
            f"{upd}.update_mlp.2.weight": (3 * h, h),
            f"{upd}.update_mlp.2.bias": (3 * h,),
            mixing_matrix_name(l): (3, 3),
        })
    shapes.update({
        "energy_head.0.weight": (h // 2, h),
        "energy_head.0.bias": (h // 2,),
        "energy_head.2.weight": (h // 4, h // 2),
        "energy_head.2.bias": (h // 4,),
        "energy_head.4.weight": (1, h // 4),
        "energy_head.4.bias": (1,),
    })
    return shapes


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _require(tensors: Mapping[str, np.ndarray], name: str, ndim: int, symbolic: str) -> np.ndarray:
    """The tensor that defines some sizes, checked before any size is known."""
    if name not in tensors:
        raise ModelFormatError(f"missing tensor '{name}' (expected shape {symbolic})")
    tensor = tensors[name]
    if tensor.ndim != ndim:
        raise ModelFormatError(
            f"tensor '{name}' has shape {_shape(tensor.shape)}, expected {symbolic}")
    return tensor


def validate(tensors: Mapping[str, np.ndarray]) -> Hyperparameters:
    """Check a complete tensor set against the architecture and return its sizes.

    Raises ModelFormatError naming the first offending tensor.
    """
    embedding = _require(tensors, "embedding.weight", 2, "[max_z+1, H]")
    centers = _require(tensors, "rbf.centers", 1, "[K]")
    max_z, h = embedding.shape[0] - 1, embedding.shape[1]
    k = centers.shape[0]
    if h <= 0 or h % 4 != 0:
        raise ModelFormatError(
            f"hidden features H={h} (width of 'embedding.weight') must be a positive "
            "multiple of 4, since the energy head has widths H/2 and H/4")
    if max_z < 0 or k == 0:
        raise ModelFormatError("'embedding.weight' and 'rbf.centers' must not be empty")

    layer_ids = {int(m.group(1)) for m in map(_LAYER_NAME.match, tensors) if m}
    # A gap in the layer numbers shows up below as missing tensors of that layer.
    layers = max(layer_ids) + 1 if layer_ids else 1
    shapes = expected_shapes(h, k, layers)

    optional = mixing_matrix_name(layers - 1)
    missing = [n for n in shapes if n not in tensors and n != optional]
    if missing:
        name = missing[0]
        hint = "; only the last layer's may be absent" if name.endswith(".mixing_matrix") else ""
        more = f"; {len(missing) - 1} more tensors missing" if len(missing) > 1 else ""
        raise ModelFormatError(
            f"missing tensor '{name}' (expected shape {_shape(shapes[name])}{hint}){more}")
    unknown = sorted(n for n in tensors if n not in shapes)
    if unknown:
        raise ModelFormatError(
            f"unknown tensor '{unknown[0]}' (not part of the {ARCHITECTURE} architecture"
            f" with L={layers})")

    dtype = embedding.dtype
    for name, tensor in tensors.items():
        expected = shapes[name]
        if expected is not None and tuple(tensor.shape) != expected:
            raise ModelFormatError(
                f"tensor '{name}' has shape {_shape(tensor.shape)}, expected {_shape(expected)}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ModelFormatError(
                f"tensor '{name}' has dtype {tensor.dtype}; "
                "only float32 and float64 are supported")
        if tensor.dtype != dtype:
            raise ModelFormatError(
                f"tensor '{name}' is {tensor.dtype} but 'embedding.weight' is {dtype}; "
                "all tensors must share one dtype")
        if not np.all(np.isfinite(tensor)):
            raise ModelFormatError(f"tensor '{name}' has non-finite values")
    if np.any(tensors["rbf.widths"] == 0):
        raise ModelFormatError(
            "tensor 'rbf.widths' has zero entries (the radial basis divides by them)")
    return Hyperparameters(hidden_features=h, layers=layers, radial_basis=k, max_z=max_z)


def validate_elements(elements: Optional[Sequence[str]], max_z: int) -> Optional[List[str]]:
    """Check an element list (symbols the model was trained on); None means unknown."""
    if elements is None:
        return None
    result = []
    for symbol in elements:
        if symbol not in CHEMICAL_SYMBOLS[1:]:
            raise ModelFormatError(f"unknown chemical symbol '{symbol}' in elements")
        z = CHEMICAL_SYMBOLS.index(symbol)
        if z > max_z:
            raise ModelFormatError(
                f"element '{symbol}' (Z={z}) is beyond the model's max_z={max_z}")
        if symbol in result:
            raise ModelFormatError(f"element '{symbol}' is listed twice")
        result.append(symbol)
    return result


def build_metadata(tensors: Mapping[str, np.ndarray], source: str, source_sha256: str,
                   cutoff: Optional[float] = None,
                   elements: Optional[Sequence[str]] = None) -> dict:
    """Validate the tensors and describe them; ``cutoff`` defaults to the last RBF center."""
    hyper = validate(tensors)
    if cutoff is None:
        # The cutoff is not a weight: the RBF centers are linspace(0, rc, K).
        cutoff = float(tensors["rbf.centers"][-1])
    cutoff = float(cutoff)
    if not (math.isfinite(cutoff) and cutoff > 0):
        raise ModelFormatError(f"cutoff must be a positive number of angstrom, got {cutoff}")
    return {
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "hidden_features": hyper.hidden_features,
        "layers": hyper.layers,
        "radial_basis": hyper.radial_basis,
        "cutoff_angstrom": cutoff,
        "max_z": hyper.max_z,
        "units": dict(UNITS),
        "elements": validate_elements(elements, hyper.max_z),
        "provenance": {"source": source, "source_sha256": source_sha256, "converter": CONVERTER},
    }


def save(path, tensors: Mapping[str, np.ndarray], metadata: dict) -> None:
    """Write a model file; ``metadata`` comes from build_metadata."""
    from safetensors.numpy import save_file

    arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    save_file(arrays, str(path), metadata={METADATA_KEY: json.dumps(metadata)})
    # The writer creates the file private (0600); a model is data to share, as any file the
    # user's umask would make.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load(path) -> Tuple[Dict[str, np.ndarray], dict]:
    """Read and check a model file; returns (tensors, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if set(raw) != {METADATA_KEY}:
        raise ModelFormatError(
            f"{path.name}: metadata must hold exactly the key '{METADATA_KEY}', "
            f"found {sorted(raw)}")
    try:
        meta = json.loads(raw[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path.name}: metadata '{METADATA_KEY}' is not JSON: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION or meta.get("architecture") != ARCHITECTURE:
        raise ModelFormatError(
            f"{path.name}: expected format_version {FORMAT_VERSION} and architecture "
            f"'{ARCHITECTURE}', found {meta.get('format_version')!r} and "
            f"{meta.get('architecture')!r}")
    hyper = validate(tensors)
    for key, value in vars(hyper).items():
        if meta.get(key) != value:
            raise ModelFormatError(
                f"{path.name}: metadata says {key}={meta.get(key)!r}, tensors say {value}")
    cutoff = meta.get("cutoff_angstrom")
    if not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
        raise ModelFormatError(
            f"{path.name}: cutoff_angstrom must be a positive number, found {cutoff!r}")
    validate_elements(meta.get("elements"), hyper.max_z)
    return tensors, meta
