"""Argument checks shared by the math functions: one-line :class:`~knnmix.errors.KnnmixError` naming the argument."""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from knnmix.errors import KnnmixError


def check_tensor(x: object, name: str, kind: str | None = None) -> Tensor:
    """``x`` itself when it is a tensor holding data (not on the meta device) of dtype ``kind``: ``"float"`` (floating
    point) or ``"int"`` (integer, not bool); else a :class:`KnnmixError` naming ``name``, its dtype and shape."""
    if not isinstance(x, Tensor):
        raise KnnmixError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise KnnmixError(f"{name} {tuple(x.shape)} is on the meta device, which holds no values; move it to a real "
                          "device first")
    if kind == "float" and not x.is_floating_point():
        raise KnnmixError(f"{name} must be floating point, got {x.dtype} {tuple(x.shape)}")
    if kind == "int" and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise KnnmixError(f"{name} must be an integer tensor, got {x.dtype} {tuple(x.shape)}")
    return x


def check_int(value: object, name: str, low: int) -> int:
    """``value`` as an int ``>= low`` (a Python or numpy integer, not a bool), else a :class:`KnnmixError`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise KnnmixError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_range(x: Tensor, name: str, n: int, what: str) -> None:
    """Integer ``x`` must lie in ``[0, n)`` (``what`` says what ``n`` counts), else a :class:`KnnmixError`."""
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= n):
        raise KnnmixError(f"{name} must lie in [0, {n}) ({what}), found {int(x.min())}..{int(x.max())}")
