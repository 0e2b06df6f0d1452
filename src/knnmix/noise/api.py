"""The two entry points: :func:`parse_noise_spec` (config validation) and :func:`apply_noise` (label corruption)."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from knnmix.errors import KnnmixError
from knnmix.noise.base import (
    NOISE_MODELS,
    NoiseInputs,
    NoiseResult,
    NoiseSpec,
    _as_label_array,
    check_rate,
    check_variant,
    lookup_model,
    transition_matrix,
)

__all__ = ["SYMMETRIC_CONVENTIONS", "apply_noise", "parse_noise_spec"]

#: ``"other"``: a flipped label moves to a uniformly chosen other class; ``"any"``: it is redrawn among all classes.
SYMMETRIC_CONVENTIONS = ("other", "any")


def parse_noise_spec(spec: str | NoiseSpec) -> NoiseSpec:
    """Parse and validate a noise spec string; needs no data, so configs can be checked up front.

    Parameters
    ----------
    spec
        ``"none"``; ``"<kind>:<rate>"`` with kind ``symmetric``, ``asymmetric``, ``pairflip`` or ``instance``
        and rate in [0, 1) (e.g. ``"symmetric:0.4"``); ``"cifar10n:<aggre|random1|random2|random3|worse>"``;
        ``"cifar100n:noisy"``. Case and surrounding spaces are ignored. A synthetic kind at rate 0
        (``"symmetric:0"``) means no noise and is returned as ``NoiseSpec("none", 0.0, None)``. A
        :class:`NoiseSpec` is returned in canonical form.

    Returns
    -------
    NoiseSpec
        The validated spec; ``str()`` of it is the canonical spec string.

    Raises
    ------
    KnnmixError
        One line naming the bad value, e.g. ``unknown noise model 'symetric' in noise spec 'symetric:0.4' (did
        you mean 'symmetric'?); ...`` or ``noise rate 1.2 in 'symmetric:1.2' is outside [0, 1)``.
    """
    if isinstance(spec, NoiseSpec):
        return spec.canonical()
    if not isinstance(spec, str):
        raise KnnmixError(f"noise spec must be a string such as 'symmetric:0.4' or 'none', got {spec!r}")
    text = spec.strip()
    if not text:
        raise KnnmixError("empty noise spec; use 'none' or e.g. 'symmetric:0.4'")
    kind_text, _, arg = text.partition(":")
    kind_text, arg = kind_text.strip(), arg.strip()
    model = lookup_model(kind_text.lower() if kind_text.lower() in NOISE_MODELS else kind_text, text)
    kind = model.name
    if model.takes_rate:
        if not arg:
            raise KnnmixError(f"noise spec {text!r} needs a rate, e.g. '{kind}:0.4'")
        try:
            value = float(arg)
        except ValueError:
            hint = f" (write {arg} as {float(arg[:-1]) / 100:g})" if _is_percent(arg) else ""
            raise KnnmixError(f"noise rate {arg!r} in {text!r} is not a number{hint}") from None
        return NoiseSpec(kind, check_rate(value, arg, text), None).canonical()
    if model.variants:
        if not arg:
            raise KnnmixError(f"noise spec {text!r} needs a variant; choose one of {', '.join(model.variants)}")
        variant = arg.lower() if arg.lower() in model.variants else arg
        return NoiseSpec(kind, None, check_variant(model, variant))
    if arg and not _is_zero(arg):
        raise KnnmixError(f"noise model {kind!r} takes no rate or variant, got {text!r}")
    return NoiseSpec(kind)


def _is_percent(arg: str) -> bool:
    if not arg.endswith("%"):
        return False
    try:
        float(arg[:-1])
    except ValueError:
        return False
    return True


def _is_zero(arg: str) -> bool:
    try:
        return float(arg) == 0.0
    except ValueError:
        return False


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise KnnmixError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


def _check_labels(labels: object, num_classes: int) -> np.ndarray:
    arr = _as_label_array(labels, "labels")
    if arr.size == 0:
        raise KnnmixError("labels is empty; noise needs at least one sample")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise KnnmixError(f"labels must lie in [0, {num_classes}) for num_classes={num_classes}; found {bad}")
    return _readonly(arr.astype(np.int64, copy=False))


def _check_coarse(coarse: object, n: int) -> np.ndarray | None:
    if coarse is None:
        return None
    arr = np.asarray(coarse)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise KnnmixError(f"coarse_labels must have shape ({n},) like labels, got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise KnnmixError(f"coarse_labels must be an integer array, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise KnnmixError(f"coarse_labels must be >= 0; found {int(arr.min())}")
    return _readonly(arr.astype(np.int64, copy=False))


def _check_features(features: object, n: int) -> np.ndarray | None:
    if features is None:
        return None
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise KnnmixError(f"features must be a 2-D array (N, D) of flattened images, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise KnnmixError(f"features has {arr.shape[0]} rows but labels has {n}")
    if arr.shape[1] == 0:
        raise KnnmixError("features has no columns (D = 0)")
    if arr.dtype.kind not in "fiub":
        raise KnnmixError(f"features must be a real array, got dtype {arr.dtype}")
    return _readonly(arr)


def apply_noise(
    spec: str | NoiseSpec,
    labels: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    family: str = "generic",
    coarse_labels: np.ndarray | None = None,
    features: np.ndarray | None = None,
    cifar_n_dir: str | os.PathLike[str] | None = None,
    symmetric_convention: str = "other",
    instance_std: float = 0.1,
) -> NoiseResult:
    """Corrupt clean labels with a noise model.

    Deterministic: the same arguments (and seed) give identical labels; all randomness comes from
    ``np.random.default_rng(seed)``. Input arrays are never modified.

    Parameters
    ----------
    spec
        Noise spec string or :class:`NoiseSpec`, see :func:`parse_noise_spec`.
    labels
        ``(N,)`` integer clean labels in ``[0, num_classes)``.
    num_classes
        ``C >= 2``.
    seed
        Non-negative integer seed.
    family
        Dataset family selecting the asymmetric class map and checked by the CIFAR-N kinds: ``digits``,
        ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``generic``.
    coarse_labels
        ``(N,)`` integer CIFAR-100 super-class labels; required by ``asymmetric`` on ``cifar100``.
    features
        ``(N, D)`` real flattened images, expected in [0, 1] (float32 preferred); required by ``instance``.
    cifar_n_dir
        Folder holding ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``; required by ``cifar10n`` / ``cifar100n``.
    symmetric_convention
        ``"other"``: a flipped label moves to a uniformly chosen other class (measured rate = r). ``"any"``
        (DivideMix): it is redrawn among all C classes (measured rate about ``r * (C - 1) / C``).
    instance_std
        Std of the truncated-normal per-sample flip rate of ``instance`` (Xia et al. use 0.1).

    Returns
    -------
    NoiseResult
        Noisy labels ``(N,)`` int64, measured rate, empirical transition matrix ``(C, C)`` and canonical spec.

    Raises
    ------
    KnnmixError
        On any bad argument or missing input, with a one-line message naming the bad value.
    """
    parsed = parse_noise_spec(spec)
    c = _check_int(num_classes, "num_classes", 2)
    seed_value = _check_int(seed, "seed", 0)
    if not isinstance(family, str) or not family:
        raise KnnmixError(f"family must be a dataset family name such as 'cifar10' or 'generic', got {family!r}")
    if symmetric_convention not in SYMMETRIC_CONVENTIONS:
        raise KnnmixError(
            f"unknown symmetric_convention {symmetric_convention!r}; choose one of {', '.join(SYMMETRIC_CONVENTIONS)}"
        )
    if isinstance(instance_std, bool) or not isinstance(instance_std, numbers.Real):
        raise KnnmixError(f"instance_std must be a positive number, got {instance_std!r}")
    if not (math.isfinite(instance_std) and instance_std > 0):
        raise KnnmixError(f"instance_std must be a positive number, got {instance_std!r}")
    if cifar_n_dir is not None and not isinstance(cifar_n_dir, (str, os.PathLike)):
        raise KnnmixError(f"cifar_n_dir must be a folder path, got {cifar_n_dir!r}")

    clean = _check_labels(labels, c)
    n = clean.shape[0]
    inputs = NoiseInputs(
        labels=clean,
        num_classes=c,
        rng=np.random.default_rng(seed_value),
        family=family,
        coarse_labels=_check_coarse(coarse_labels, n),
        features=_check_features(features, n),
        cifar_n_dir=None if cifar_n_dir is None else Path(cifar_n_dir),
        symmetric_convention=symmetric_convention,
        instance_std=float(instance_std),
    )
    model = lookup_model(parsed.kind, str(parsed))
    noisy = np.asarray(model.generate(parsed, inputs))
    if noisy.shape != (n,) or noisy.dtype.kind not in "iu" or noisy.min() < 0 or noisy.max() >= c:
        raise RuntimeError(
            f"noise model {parsed.kind!r} returned {noisy.dtype} {noisy.shape} labels, expected int ({n},) in [0, {c})"
        )
    noisy = noisy.astype(np.int64, copy=False)
    if np.shares_memory(noisy, np.asarray(labels)):
        noisy = noisy.copy()
    clean_copy = np.array(clean, dtype=np.int64, copy=True)
    return NoiseResult(
        noisy_labels=noisy,
        noise_rate=float(np.mean(noisy != clean_copy)),
        transition=transition_matrix(clean_copy, noisy, c),
        spec=str(parsed),
        clean_labels=clean_copy,
    )
