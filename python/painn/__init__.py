"""PaiNN student force field: the engine's Python bindings, an ASE calculator, model-file
tools and a PyTorch reference.

Submodules are imported on demand (``painn.ase``, ``painn.convert``, ``painn.model_format``,
``painn.reference``); this file stays light so that importing the package never pulls in
torch, onnx or the engine library. ``painn.Model``, ``painn.Calculator``,
``painn.PainnError`` and ``painn.engine_version`` come from ``painn._engine`` (ctypes
bindings to the bundled ``libpainn.so``) on first use.
"""

__version__ = "0.1.0"

_ENGINE_NAMES = {"Model": "Model", "Calculator": "Calculator", "Results": "Results",
                 "PainnError": "PainnError", "engine_version": "version"}


def __getattr__(name):
    if name in _ENGINE_NAMES:
        from . import _engine

        return getattr(_engine, _ENGINE_NAMES[name])
    raise AttributeError(f"module 'painn' has no attribute {name!r}")
