"""Small helpers shared by the dataset loaders: data roots, one-line error text and image statistics."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Where downloadable data sets live unless the user passes ``root`` (``data.root``).
DEFAULT_CACHE_ROOT = "~/.cache/knnmix/data"


def cache_root() -> Path:
    """The knnmix data cache, ``~/.cache/knnmix/data`` with ``~`` expanded."""
    return Path(DEFAULT_CACHE_ROOT).expanduser()


def as_path(root: str | os.PathLike[str]) -> Path:
    """A user-given data root as a :class:`Path`, with ``~`` expanded."""
    return Path(root).expanduser()


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message squeezed onto one line (for :class:`~knnmix.errors.DataError` texts)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``uint8`` images ``(N, C, H, W)``, on a 0..1 scale."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
