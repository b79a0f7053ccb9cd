"""painn-convert: turn an ONNX export or a PyTorch checkpoint into a painn model file.

    painn-convert INPUT -o OUTPUT.safetensors [--cutoff X] [--elements H C O ...]

INPUT is chosen by extension:

* ``.onnx``: the weights are the graph's initializers, read with ``onnx`` only.
  An export may also hold initializers that are not weights (folded constants named
  ``onnx::...`` or ``/...``). Initializers outside the model's name prefixes
  (``embedding.``, ``rbf.``, ``interactions.``, ``energy_head.``) are therefore ignored;
  one under those prefixes that the architecture does not know is an error, because it
  means the export does not match the spec. (The student export holds exactly the
  weights.)
* ``.pt`` / ``.pth``: a PyTorch state_dict, bare or under ``model_state_dict`` or
  ``state_dict``. Every entry must be a model tensor: a state_dict holds nothing else.

Names may carry a ``model.`` prefix (training checkpoints); it is removed.
Errors exit with status 2 and one line ``painn-convert: error: ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from . import __version__, model_format

PROGRAM = "painn-convert"
_PREFIX = "model."


class ConversionError(Exception):
    """A problem with the input that the user must fix (reported without traceback)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _strip_prefix(named: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    result = {}
    for name, tensor in named.items():
        short = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
        if short in result:
            raise ConversionError(
                f"tensor '{short}' appears both with and without the '{_PREFIX}' prefix")
        result[short] = tensor
    return result


def _read_onnx(path: Path) -> Dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:  # protobuf raises assorted errors on a damaged file
        raise ConversionError(f"cannot read ONNX file {path}: {e}") from e
    named = _strip_prefix({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    return {name: t for name, t in named.items() if name.startswith(model_format.MODEL_PREFIXES)}


def _read_torch(path: Path) -> Dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            "reading PyTorch checkpoints needs torch: pip install 'painn[torch]'") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ConversionError(f"cannot read PyTorch checkpoint {path}: {e}") from e
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict"):
            if key in obj:
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ConversionError(f"{path.name} holds a {type(obj).__name__}, not a state_dict")
    named = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"entry '{name}' of the state_dict is a {type(value).__name__}, not a tensor")
        if value.dtype not in (torch.float32, torch.float64):
            raise ConversionError(
                f"tensor '{name}' has dtype {value.dtype}; only float32 and float64 are supported")
        named[name] = value.detach().cpu().numpy()
    return _strip_prefix(named)


_READERS = {".onnx": _read_onnx, ".pt": _read_torch, ".pth": _read_torch}


def read_source(path) -> Dict[str, np.ndarray]:
    """The model tensors of an ONNX export or PyTorch checkpoint, under the spec's names."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ConversionError(
            f"unsupported input '{path.name}': expected one of {', '.join(sorted(_READERS))}")
    if not path.is_file():
        raise ConversionError(f"no such file: {path}")
    return reader(path)


def convert(input_path, output_path, cutoff: Optional[float] = None,
            elements: Optional[Sequence[str]] = None) -> dict:
    """Convert INPUT to a painn model file at OUTPUT and return its metadata.

    ``cutoff`` (angstrom) overrides the last RBF center; ``elements`` lists the chemical
    symbols the model was trained on. Raises ConversionError or ModelFormatError.
    """
    input_path = Path(input_path)
    tensors = read_source(input_path)
    metadata = model_format.build_metadata(
        tensors, source=input_path.name, source_sha256=_sha256(input_path),
        cutoff=cutoff, elements=elements)
    model_format.save(output_path, tensors, metadata)
    return metadata


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Convert a student PaiNN ONNX export or PyTorch checkpoint to a painn "
                    ".safetensors model file.")
    parser.add_argument("input", help="model.onnx, checkpoint.pt or checkpoint.pth")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors file")
    parser.add_argument("--cutoff", type=float, metavar="ANGSTROM",
                        help="cutoff radius (default: the last RBF center)")
    parser.add_argument("--elements", nargs="+", metavar="SYMBOL",
                        help="chemical symbols the model was trained on (default: not recorded)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.input, args.output, cutoff=args.cutoff, elements=args.elements)
    except (ConversionError, model_format.ModelFormatError, OSError) as e:
        message = " ".join(str(e).split())  # external errors may span several lines
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: H={meta['hidden_features']} L={meta['layers']} "
          f"K={meta['radial_basis']} cutoff={meta['cutoff_angstrom']} A max_z={meta['max_z']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
