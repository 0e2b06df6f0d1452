"""Scaling out on Ray: data-parallel training with Ray Train (:mod:`knnmix.scale.train`).

Everything that imports Ray lives in this package; the engine only sees ``torch.distributed`` (through
:mod:`knnmix.methods.dist`). ``knnmix train --workers N`` calls :func:`knnmix.scale.train.train_distributed`.
"""

from __future__ import annotations

__all__ = ["train_distributed"]


def __getattr__(name: str):  # lazy: importing knnmix.scale must not import Ray
    if name == "train_distributed":
        from knnmix.scale.train import train_distributed

        return train_distributed
    raise AttributeError(name)
