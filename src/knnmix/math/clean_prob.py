"""Clean probabilities from per-sample losses: min-max normalisation, a loss window, a two-component GMM.

Samples whose labels are wrong are fit late, so early in training their loss is high. A two-component Gaussian
mixture on the normalised losses separates the two modes; the posterior of the low-mean component is each sample's
probability of carrying a clean label (Arazo et al. 2019; Li et al. 2020, DivideMix; Lu & He).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from knnmix.math._checks import check_int, check_range, check_tensor


def normalise_losses(losses: Tensor) -> Tensor:
    """Min-max normalise losses ``(N,)`` to [0, 1]; a constant vector becomes all zeros.

    NaN entries (samples not evaluated this epoch) stay NaN and are ignored by the min and max.
    """
    _check_losses(losses)
    finite = losses[~torch.isnan(losses)]
    if finite.numel() == 0:
        raise ValueError("losses holds no finite value")
    lo, hi = finite.min(), finite.max()
    span = hi - lo
    if span <= 0:
        return torch.where(torch.isnan(losses), losses, torch.zeros_like(losses))
    return (losses - lo) / span


def window_mean(history: Tensor, window: int) -> Tensor:
    """Mean of the last ``window`` rows of a loss history ``(H, N)`` -> ``(N,)``, ignoring NaN entries.

    A sample with no finite value in the window gets NaN.
    """
    check_tensor(history, "history", "float")
    if history.dim() != 2 or history.shape[0] == 0:
        raise ValueError(f"history must be (H, N) with H >= 1, got {tuple(history.shape)}")
    check_int(window, "window", 1)
    return torch.nanmean(history[-window:], dim=0)


def fit_clean_probability(
    losses: Tensor, *, max_iter: int = 10, tol: float = 1e-2, reg_covar: float = 5e-4, seed: int = 0
) -> Tensor:
    """Posterior of the low-mean component of a two-component GMM fit to losses ``(N,)`` -> ``(N,)`` in [0, 1].

    NaN losses (samples outside this fit) get NaN. Degenerate inputs -- fewer than two finite values, or all equal
    -- give probability 1 everywhere: there is no evidence that any label is wrong. Deterministic given ``seed``.
    """
    _check_losses(losses)
    mask = ~torch.isnan(losses)
    out = torch.full_like(losses, float("nan"), dtype=torch.float32)
    values = losses[mask].double().cpu().numpy().reshape(-1, 1)
    if values.shape[0] < 2 or np.ptp(values) <= 0:
        out[mask] = 1.0
        return out
    from sklearn.exceptions import ConvergenceWarning  # here: scikit-learn's import costs seconds in every process
    from sklearn.mixture import GaussianMixture  # that imports the engine (Ray Train's workers, a sweep's trials)

    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 10 EM steps is the authors' deliberate choice
        gmm.fit(values)
    post = gmm.predict_proba(values)[:, int(np.argmin(gmm.means_.ravel()))]
    out[mask] = torch.from_numpy(post).float().to(out.device)
    return out


def fit_clean_probability_per_class(
    losses: Tensor, labels: Tensor, num_classes: int, *, min_class: int = 20, max_iter: int = 10, tol: float = 1e-2,
    reg_covar: float = 5e-4, seed: int = 0,
) -> Tensor:
    """One two-component GMM per class of ``labels`` ``(N,)`` over losses ``(N,)`` -> clean probabilities ``(N,)``.

    Within a class the losses are min-max normalised again before the fit, so the variance floor means the same in
    every class. A class with fewer than ``min_class`` finite losses keeps the probabilities of one global fit over
    all losses. Systematic (asymmetric) flips are fitted by the network, so their losses are low in absolute terms
    but still higher than those of the class's clean samples: a per-class split sees them where a global one does
    not. NaN losses get NaN.
    """
    _check_losses(losses)
    check_tensor(labels, "labels", "int")
    if labels.shape != losses.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and losses {tuple(losses.shape)} must both be (N,)")
    check_range(labels, "labels", check_int(num_classes, "num_classes", 1), "num_classes")
    if min_class < 2:
        raise ValueError(f"min_class must be >= 2, got {min_class}")
    gmm = {"max_iter": max_iter, "tol": tol, "reg_covar": reg_covar}
    out = fit_clean_probability(losses, seed=seed, **gmm)
    finite = ~torch.isnan(losses)
    for c in range(num_classes):
        mask = finite & (labels == c)
        if int(mask.sum()) >= min_class:
            out[mask] = fit_clean_probability(normalise_losses(losses[mask]), seed=seed + c + 1, **gmm)
    return out


def _check_losses(losses: Tensor) -> None:
    if not isinstance(losses, Tensor) or losses.dim() != 1:
        raise ValueError(f"losses must be a 1-D tensor (N,), got {getattr(losses, 'shape', type(losses))}")
    check_tensor(losses, "losses", "float")
    if bool((bad := torch.isinf(losses)).any()):
        raise ValueError(f"losses holds {int(bad.sum())} non-finite values")
