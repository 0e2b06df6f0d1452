"""Training methods as registered parts of one engine: ``ce``, ``mixup``, ``selc``, ``knnmix``."""

from knnmix.methods import builtin as _builtin  # noqa: F401  (registers the built-in methods)
from knnmix.methods.base import METHODS, Method, TrainContext

__all__ = ["METHODS", "Method", "TrainContext"]
