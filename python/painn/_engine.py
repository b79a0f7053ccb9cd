"""ctypes bindings to the painn engine (``include/painn.h``), and nothing more.

A thin mirror of the C ABI: every function of the header is declared with its exact
signature; :class:`Model` and :class:`Calculator` own the engine's handles and free them on
``close()`` (or when collected); every non-zero status becomes a :class:`PainnError` with
the status code and the engine's message (``painn_last_error``). Arrays go in and out as
C-contiguous numpy ``float64`` / ``int32`` arrays, converted only when the conversion
changes no value: atomic numbers must be integers (29.7, True, NaN or 2**32 + 29 are
refused, never rounded, taken as hydrogen or wrapped), positions and cells real numbers of
the right shape.

The shared library is the ``libpainn.so`` installed next to this module by
``pip install ./python``. ``PAINN_LIBRARY=/path/to/libpainn.so`` overrides it (development);
in a source checkout without an installed library, the crate's own
``target/release/libpainn.so`` (``$PAINN_CARGO_TARGET_DIR`` / ``$CARGO_TARGET_DIR`` honoured)
is used.
"""

from __future__ import annotations

import ctypes
import numbers as _numbers
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

# Status codes (painn_status_t), as in painn.h.
SUCCESS = 0
INVALID_ARGUMENT = 1
MODEL_ERROR = 2
IO_ERROR = 3
CUDA_ERROR = 4
UNSUPPORTED = 5
INTERNAL_ERROR = 255

STATUS_NAMES = {
    SUCCESS: "PAINN_SUCCESS",
    INVALID_ARGUMENT: "PAINN_INVALID_ARGUMENT",
    MODEL_ERROR: "PAINN_MODEL_ERROR",
    IO_ERROR: "PAINN_IO_ERROR",
    CUDA_ERROR: "PAINN_CUDA_ERROR",
    UNSUPPORTED: "PAINN_UNSUPPORTED",
    INTERNAL_ERROR: "PAINN_INTERNAL_ERROR",
}

#: The C ABI version these bindings were written for (PAINN_ABI_VERSION of painn.h).
ABI_VERSION = 1

LIBRARY_NAME = "libpainn.so"


class PainnError(Exception):
    """A failed engine call: ``status`` is the painn_status_t code (see ``STATUS_NAMES``),
    ``message`` the engine's own message (``painn_last_error``)."""

    def __init__(self, status: int, message: str):
        self.status = int(status)
        self.message = message
        super().__init__(f"{message} [{STATUS_NAMES.get(self.status, 'status %d' % self.status)}]")


class _Model(ctypes.Structure):
    pass


class _Calculator(ctypes.Structure):
    pass


_status = ctypes.c_int32
_model_p = ctypes.POINTER(_Model)
_calc_p = ctypes.POINTER(_Calculator)
_f64_p = ctypes.POINTER(ctypes.c_double)
_f32_p = ctypes.POINTER(ctypes.c_float)
_i32_p = ctypes.POINTER(ctypes.c_int32)

# name: (restype, argtypes), in the order of painn.h.
_PROTOTYPES = {
    "painn_version": (ctypes.c_char_p, []),
    "painn_abi_version": (ctypes.c_uint32, []),
    "painn_model_load": (_status, [ctypes.c_char_p, ctypes.POINTER(_model_p)]),
    "painn_model_load_buffer": (_status, [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                          ctypes.POINTER(_model_p)]),
    "painn_model_free": (_status, [_model_p]),
    "painn_model_cutoff": (_status, [_model_p, _f64_p]),
    "painn_model_layers": (_status, [_model_p, _i32_p]),
    "painn_model_max_z": (_status, [_model_p, _i32_p]),
    "painn_model_element_count": (_status, [_model_p, _i32_p]),
    "painn_model_element": (_status, [_model_p, ctypes.c_int32, _i32_p]),
    "painn_calculator_create": (_status, [_model_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_double,
                                          ctypes.POINTER(_calc_p)]),
    "painn_calculator_free": (_status, [_calc_p]),
    "painn_calculator_device": (_status, [_calc_p, ctypes.c_char_p, ctypes.c_size_t]),
    "painn_cuda_device_count": (_status, [_i32_p]),
    # Array arguments as plain addresses: `ndarray.ctypes.data_as(POINTER(...))` costs a few
    # microseconds per array, a tenth of a molecule's call.
    "painn_compute": (_status, [_calc_p, ctypes.c_int64] + [ctypes.c_void_p] * 9),
    "painn_compute_float": (_status, [_calc_p, ctypes.c_int64, _i32_p, _f32_p, _f32_p, _i32_p,
                                      _f64_p, _f64_p, _f64_p, _f64_p, _f64_p]),
    "painn_compute_local": (_status, [_calc_p, ctypes.c_int64, ctypes.c_int64, _i32_p, _f64_p,
                                      _f64_p, _f64_p, _f64_p, _f64_p, _f64_p]),
    "painn_last_error": (ctypes.c_char_p, []),
}


def _candidates():
    """Where the library is looked for, in order."""
    override = os.environ.get("PAINN_LIBRARY")
    if override:
        return [Path(override)]
    here = Path(__file__).resolve().parent
    found = [here / LIBRARY_NAME]
    # A source checkout (python/painn/ inside the repository): the crate's own build.
    repo = here.parent.parent
    if (repo / "Cargo.toml").is_file():
        target = os.environ.get("PAINN_CARGO_TARGET_DIR") or os.environ.get("CARGO_TARGET_DIR")
        target_dir = Path(target) if target else repo / "target"
        if not target_dir.is_absolute():
            target_dir = repo / target_dir
        found.append(target_dir / "release" / LIBRARY_NAME)
    return found


_lib = None
_lib_lock = threading.Lock()


def library() -> ctypes.CDLL:
    """The loaded engine library (loaded and checked on first use)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        candidates = _candidates()
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ImportError(
                "painn: the engine library was not found (looked at "
                + ", ".join(str(p) for p in candidates)
                + "); install the package with `pip install ./python` from the repository "
                "(it builds and bundles libpainn.so), or set PAINN_LIBRARY=/path/to/libpainn.so")
        lib = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in _PROTOTYPES.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        abi = lib.painn_abi_version()
        if abi != ABI_VERSION:
            raise ImportError(f"painn: {path} implements C ABI version {abi}, these bindings need "
                              f"{ABI_VERSION}; reinstall the package")
        lib.path = path
        _lib = lib
        return lib


def _check(status: int) -> None:
    if status != SUCCESS:
        message = library().painn_last_error()
        raise PainnError(status, message.decode("utf-8", "replace") if message else "")


def version() -> str:
    """The engine's version, "major.minor.patch"."""
    return library().painn_version().decode()


def abi_version() -> int:
    return int(library().painn_abi_version())


def cuda_device_count() -> int:
    """The number of usable CUDA GPUs (0 without a driver or a GPU)."""
    count = ctypes.c_int32()
    _check(library().painn_cuda_device_count(ctypes.byref(count)))
    return count.value


def _address(array: Optional[np.ndarray]) -> Optional[int]:
    """The address of a C-contiguous array's first element (None for None)."""
    return None if array is None else array.ctypes.data


class _Handle:
    """An engine handle owned by a Python object: freed by close(), `with` or garbage collection."""

    _kind = "handle"
    _free = ""  # the C function that frees it

    def _live(self):
        if not getattr(self, "_handle", None):
            raise ValueError(f"painn: the {self._kind} was closed")
        return self._handle

    def close(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._handle = None
            getattr(self._lib, self._free)(handle)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Model(_Handle):
    """A loaded model file (``painn_model_load``): immutable, shareable between
    calculators and threads."""

    _kind, _free = "model", "painn_model_free"

    def __init__(self, path: Union[str, os.PathLike]):
        self._lib = library()
        self._handle = _model_p()
        self.path = os.fspath(path)
        _check(self._lib.painn_model_load(os.fsencode(self.path), ctypes.byref(self._handle)))

    @classmethod
    def from_bytes(cls, data: bytes, name: Optional[str] = None) -> "Model":
        """A model from the bytes of a model file (``painn_model_load_buffer``)."""
        self = cls.__new__(cls)
        self._lib = library()
        self._handle = _model_p()
        self.path = name
        data = bytes(data)
        _check(self._lib.painn_model_load_buffer(data, len(data), None if name is None else name.encode(),
                                                  ctypes.byref(self._handle)))
        return self

    @property
    def cutoff(self) -> float:
        value = ctypes.c_double()
        _check(self._lib.painn_model_cutoff(self._live(), ctypes.byref(value)))
        return value.value

    @property
    def layers(self) -> int:
        value = ctypes.c_int32()
        _check(self._lib.painn_model_layers(self._live(), ctypes.byref(value)))
        return value.value

    @property
    def max_z(self) -> int:
        value = ctypes.c_int32()
        _check(self._lib.painn_model_max_z(self._live(), ctypes.byref(value)))
        return value.value

    @property
    def elements(self) -> tuple:
        """The atomic numbers the model accepts, ascending: the element list of its file (the
        elements it was trained on), or 1..max_z for a file without one."""
        count = ctypes.c_int32()
        _check(self._lib.painn_model_element_count(self._live(), ctypes.byref(count)))
        numbers = []
        for index in range(count.value):
            number = ctypes.c_int32()
            _check(self._lib.painn_model_element(self._live(), index, ctypes.byref(number)))
            numbers.append(number.value)
        return tuple(numbers)

    def __repr__(self):
        return f"painn.Model({self.path!r})"


_INT32 = np.iinfo(np.int32)


def _refuse_booleans(values, what: str) -> None:
    if isinstance(values, (bool, np.bool_)) or (
            isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in values)):
        raise TypeError(f"painn: {what} must be integers, not booleans (True would be taken as 1)")


def atomic_numbers_array(values, model: Optional[Model] = None) -> np.ndarray:
    """``values`` as a 1-D int32 array, refusing what the conversion would change: booleans,
    non-integral or non-finite numbers, integers beyond 32 bits, non-numbers (``model``
    names its range in the message)."""
    _refuse_booleans(values, "atomic numbers")
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"painn: numbers must be one-dimensional, not of shape {array.shape}")
    kind = array.dtype.kind
    if kind == "b":
        raise TypeError("painn: atomic numbers must be integers, not booleans (True would be taken as 1)")
    if kind == "O":
        for index, value in enumerate(array):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, _numbers.Real):
                raise TypeError(f"painn: atomic number {value!r} of atom {index} is not an integer")
        array = np.array([v if isinstance(v, _numbers.Integral) else float(v) for v in array])
        kind = array.dtype.kind
    if kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            index = int(np.argmax(bad))
            raise ValueError(f"painn: atomic number {float(array[index])!r} of atom {index} is not an integer")
    elif kind not in "iuO" and array.size:
        raise TypeError(f"painn: atomic numbers must be integers, not {array.dtype}")
    if kind == "O" or (array.size and (array.min() < _INT32.min or array.max() > _INT32.max)):
        outside = [i for i, v in enumerate(array.tolist()) if not _INT32.min <= v <= _INT32.max]
        if outside:
            accepted = f"; the model takes 1 to {model.max_z}" if model is not None else ""
            raise ValueError(f"painn: atomic number {array.tolist()[outside[0]]} of atom {outside[0]} is out of "
                             f"range (atomic numbers are 32-bit integers{accepted})")
    return np.ascontiguousarray(array, dtype=np.int32)


def real_array(values, name: str) -> np.ndarray:
    """``values`` as a C-contiguous float64 array, refusing booleans, complex numbers, strings
    and other non-numbers (finiteness is the engine's check, naming the atom)."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"painn: {name} must be real numbers, not {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float64)


def pbc_flags(pbc) -> np.ndarray:
    """Periodic flags as three int32: one flag for all three axes (``pbc=True``, as ASE
    accepts) or one per axis."""
    flags = np.asarray(pbc)
    if flags.ndim == 0:
        flags = np.repeat(flags, 3)
    if flags.shape != (3,):
        raise ValueError(f"painn: pbc must be one flag or three, not of shape {flags.shape}")
    if flags.dtype.kind not in "biuf":
        raise TypeError(f"painn: pbc flags must be booleans, not {flags.dtype}")
    return np.ascontiguousarray(flags.astype(bool), dtype=np.int32)


@dataclass
class Results:
    """What ``Calculator.compute`` returns (eV, eV/A; virials in eV, W[a][b] = sum over
    edges r_ij[a] f_ij[b]); ``energies`` and ``atom_virials`` are None unless asked for."""

    energy: float
    forces: np.ndarray  # (n, 3)
    virial: np.ndarray  # (3, 3)
    energies: Optional[np.ndarray] = None  # (n,)
    atom_virials: Optional[np.ndarray] = None  # (n, 3, 3)


class Calculator(_Handle):
    """A model bound to a device and a precision (``painn_calculator_create``), with its
    neighbour list (reused through the skin) and work buffers.

    ``device``: "cpu", "cuda", "cuda:N" or "auto" (None: "auto"); ``precision``: "f32" or
    "f64" (None: "f32"); ``skin``: neighbour-list skin in Angstrom (None: the engine's
    default, 1 A). One thread at a time (a lock makes concurrent calls wait).
    """

    _kind, _free = "calculator", "painn_calculator_free"

    def __init__(self, model: Model, device: str = "auto", precision: str = "f32",
                 skin: Optional[float] = None):
        device = "auto" if device is None else device
        precision = "f32" if precision is None else precision
        for name, value, choices in (("device", device, "'cpu', 'cuda', 'cuda:N' or 'auto'"),
                                     ("precision", precision, "'f32' or 'f64'")):
            if not isinstance(value, str):
                raise TypeError(f"painn: {name} must be a string, {choices}, not {value!r}")
        self._lib = library()
        self._handle = _calc_p()
        self.model = model  # keeps the model alive as long as the calculator
        self._lock = threading.Lock()
        _check(self._lib.painn_calculator_create(model._live(), device.encode(), precision.encode(),
                                                 -1.0 if skin is None else float(skin),
                                                 ctypes.byref(self._handle)))
        self.requested_device = device
        self.precision = precision
        self.skin = skin

    @property
    def device(self) -> str:
        """The device it runs on: "cpu", or the GPU's name and architecture."""
        buffer = ctypes.create_string_buffer(256)
        _check(self._lib.painn_calculator_device(self._live(), buffer, len(buffer)))
        return buffer.value.decode("utf-8", "replace")

    def compute(self, numbers, positions, cell=None, pbc: Union[bool, Sequence[bool]] = (False, False, False),
                energies: bool = False, atom_virials: bool = False) -> Results:
        """Energy, forces and virial of the atoms ``numbers`` (n integers) at ``positions``
        (n, 3, Angstrom, wrapped or not) in ``cell`` (3, 3, lattice vectors as rows; None for
        none) with periodic axes ``pbc`` (three flags, or one for all three); per-atom
        energies and virials when asked for."""
        numbers = atomic_numbers_array(numbers, self.model)
        positions = real_array(positions, "positions")
        n = numbers.shape[0]
        if positions.shape != (n, 3):
            raise ValueError(f"painn: positions must have shape ({n}, 3), not {positions.shape}")
        if cell is not None:
            cell = real_array(cell, "cell")
            if cell.shape != (3, 3):
                raise ValueError(f"painn: cell must have shape (3, 3), not {cell.shape}")
        flags = pbc_flags(pbc)
        energy = ctypes.c_double()
        forces = np.empty((n, 3), dtype=np.float64)
        virial = np.empty((3, 3), dtype=np.float64)
        per_atom = np.empty(n, dtype=np.float64) if energies else None
        atom_virial = np.empty((n, 3, 3), dtype=np.float64) if atom_virials else None
        with self._lock:
            _check(self._lib.painn_compute(
                self._live(), n, _address(numbers), _address(positions), _address(cell),
                _address(flags), ctypes.byref(energy), _address(forces), _address(virial),
                _address(per_atom), _address(atom_virial)))
        return Results(energy.value, forces, virial, per_atom, atom_virial)

    def __repr__(self):
        return f"painn.Calculator({self.model!r}, device={self.requested_device!r}, precision={self.precision!r})"
