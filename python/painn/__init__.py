"""PaiNN student force field: model-file tools and a PyTorch reference.

Submodules are imported on demand (``painn.convert``, ``painn.model_format``,
``painn.reference``); this file stays light so that importing the package never
pulls in torch or onnx.
"""

__version__ = "0.1.0"
