"""Soft targets: one-hot initialisation, the moving-average correction and its schedule (Lu & He, SELC)."""

from __future__ import annotations

import torch
from torch import Tensor

from knnmix.math._checks import check_int, check_range, check_tensor


def one_hot_targets(labels: Tensor, num_classes: int) -> Tensor:
    """Given labels ``(N,)`` int -> one-hot float targets ``(N, C)``."""
    if check_tensor(labels, "labels", "int").dim() != 1:
        raise ValueError(f"labels must be (N,), got {tuple(labels.shape)}")
    check_range(labels, "labels", check_int(num_classes, "num_classes", 1), "num_classes")
    return torch.nn.functional.one_hot(labels.long(), num_classes).float()


def update_soft_targets(targets: Tensor, probs: Tensor, momentum: float, keep: Tensor | None = None) -> Tensor:
    """``t <- m t + (1 - m) p`` for targets and predicted probabilities ``(N, C)`` and ``m`` in [0, 1]; returns a new
    tensor, on the probability simplex when both inputs are.

    ``keep`` ``(N,)`` in [0, 1] withholds that share of each sample's step: ``t <- t + (1 - m)(1 - keep)(p - t)``
    (DivideMix's label refinement with ``keep`` = the clean probability: a sample held clean keeps its label).
    """
    check_tensor(targets, "targets")
    check_tensor(probs, "probs")
    if targets.shape != probs.shape or targets.dim() != 2:
        raise ValueError(f"targets {tuple(targets.shape)} and probs {tuple(probs.shape)} must both be (N, C)")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    if keep is None:
        return momentum * targets + (1.0 - momentum) * probs.to(targets.dtype)
    if check_tensor(keep, "keep").shape != targets.shape[:1] or bool(((keep < 0) | (keep > 1) | keep.isnan()).any()):
        raise ValueError(f"keep must be (N,) = ({targets.shape[0]},) with values in [0, 1], got {tuple(keep.shape)}")
    if not targets.is_floating_point():  # e.g. one-hot int64: the step below would truncate to zero
        targets = targets.to(probs.dtype if probs.is_floating_point() else torch.get_default_dtype())
    step = ((1.0 - momentum) * (1.0 - keep.to(targets.dtype)))[:, None]
    return targets + step * (probs.to(targets.dtype) - targets)


def is_correction_epoch(epoch: int, start: int, period: int) -> bool:
    """Whether soft targets are corrected in (1-based) ``epoch``: from ``start`` on, every ``period`` epochs."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    return epoch >= start and (epoch - start) % period == 0
