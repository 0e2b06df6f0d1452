"""Synthetic noise models: none, symmetric, asymmetric, pairflip and instance-dependent (Xia et al. 2020).

All randomness comes from ``inputs.rng`` (``np.random.default_rng(seed)``), consumed in a fixed order, so a
call is reproducible from its seed. See ``docs/noise.md`` for the exact conventions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import numpy as np

from knnmix.errors import KnnmixError, did_you_mean
from knnmix.noise.base import NoiseInputs, NoiseSpec, register_noise_model

#: Fixed asymmetric class maps ``{source: target}`` of the 10-class families. Classes not listed keep their
#: label. ``cifar100`` is built from the data's super-classes by :func:`cifar100_superclass_map`.
ASYMMETRIC_CLASS_MAPS: Mapping[str, Mapping[int, int]] = MappingProxyType(
    {
        # truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog
        "cifar10": MappingProxyType({9: 1, 2: 0, 4: 7, 3: 5, 5: 3}),
        # Patrini et al. 2017 (MNIST): 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1
        "digits": MappingProxyType({2: 7, 3: 8, 5: 6, 6: 5, 7: 1}),
        # T-shirt/top -> Shirt, Pullover <-> Coat, Sneaker -> Sandal, Ankle boot -> Sneaker
        "fashion-mnist": MappingProxyType({0: 6, 2: 4, 4: 2, 7: 5, 9: 7}),
    }
)


def exact_count(rate: float, n: int) -> int:
    """``round(rate * n)`` with halves rounded up: how many of ``n`` samples a rate-``rate`` model flips.

    Computed on the rate as written (its shortest decimal), exactly: in floats ``0.29 * 50`` is 14.499999999999998,
    and the half, 14.5, was rounded down."""
    return min(n, math.floor(Fraction(repr(float(rate))) * n + Fraction(1, 2)))


def flip_within_classes(
    labels: np.ndarray, class_map: dict[int, int], rate: float, rng: np.random.Generator
) -> np.ndarray:
    """``(N,)`` int64 copy of ``labels`` in which exactly ``exact_count(rate, n_s)`` random samples of each source
    class ``s`` of ``class_map`` ``{source: target}`` flipped to ``class_map[s]``.

    Source classes are visited in ascending order; each draws one permutation of its sample indices and flips
    a prefix of it, so with the same seed the samples flipped at a lower rate are a subset of those flipped
    at a higher rate.
    """
    noisy = np.array(labels, dtype=np.int64, copy=True)
    for src in sorted(class_map):
        idx = np.flatnonzero(labels == src)
        noisy[rng.permutation(idx)[: exact_count(rate, idx.size)]] = class_map[src]
    return noisy


@register_noise_model("none", summary="labels unchanged")
def _none(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
    return np.array(inputs.labels, dtype=np.int64, copy=True)


@register_noise_model("symmetric", takes_rate=True, summary="exactly round(r*N) random labels move to another class")
def _symmetric(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
    """Flip exactly ``round(r * N)`` uniformly chosen samples.

    RNG order: one permutation of ``N`` (its first ``k`` entries are flipped), then ``N`` class draws in
    permutation order. Hence, for one seed, lower-rate flips are a subset of higher-rate flips with the same
    new labels.
    """
    assert spec.rate is not None
    labels, c, rng = inputs.labels, inputs.num_classes, inputs.rng
    n = labels.shape[0]
    chosen = rng.permutation(n)[: exact_count(spec.rate, n)]
    noisy = np.array(labels, dtype=np.int64, copy=True)
    if inputs.symmetric_convention == "other":
        offsets = rng.integers(1, c, size=n)[: chosen.size]  # uniform over the C-1 other classes
        noisy[chosen] = (labels[chosen] + offsets) % c
    else:  # "any": DivideMix's redraw among all C classes; ~1/C of the chosen keep their class
        noisy[chosen] = rng.integers(0, c, size=n)[: chosen.size]
    return noisy


def cifar100_superclass_map(labels: np.ndarray, coarse_labels: np.ndarray) -> dict[int, int]:
    """``{fine class: fine class it flips to}`` for every fine class in ``(N,)`` int ``labels``, built from the
    real (fine, coarse) pairs of the data with ``(N,)`` int super-class ``coarse_labels``.

    The fine classes of each super-class, sorted ascending, map each to the next one, the last to the first (a
    group of one maps to itself).
    """
    labels = np.asarray(labels, dtype=np.int64)
    coarse = np.asarray(coarse_labels, dtype=np.int64)
    pairs = np.unique(np.stack([labels, coarse], axis=1), axis=0)  # sorted by fine, then coarse
    repeated = np.flatnonzero(np.diff(pairs[:, 0]) == 0)
    if repeated.size:
        dup = pairs[repeated[0], 0]
        raise KnnmixError(f"coarse_labels are inconsistent: fine class {int(dup)} appears with coarse labels "
                          f"{pairs[pairs[:, 0] == dup, 1].tolist()}; pass the data's own super-class labels")
    mapping: dict[int, int] = {}
    for sup in np.unique(pairs[:, 1]):
        group = pairs[pairs[:, 1] == sup, 0]  # ascending
        mapping.update(zip(group.tolist(), np.roll(group, -1).tolist(), strict=True))
    return mapping


def asymmetric_class_map(
    family: str, *, labels: np.ndarray | None = None, coarse_labels: np.ndarray | None = None
) -> dict[int, int]:
    """The asymmetric-noise class map ``{source: target}`` of dataset family ``cifar10``, ``cifar100``, ``digits``
    or ``fashion-mnist``; classes not in the map are never flipped. ``cifar100`` needs the ``(N,)`` fine
    ``labels`` and super-class ``coarse_labels``.
    """
    if family == "cifar100":
        if coarse_labels is None or labels is None:
            raise KnnmixError("asymmetric noise on cifar100 needs coarse_labels (the CIFAR-100 super-class of each "
                              "sample)")
        return cifar100_superclass_map(labels, coarse_labels)
    if family not in ASYMMETRIC_CLASS_MAPS:
        known = did_you_mean(family, [*ASYMMETRIC_CLASS_MAPS, "cifar100"])
        raise KnnmixError(f"asymmetric noise has no class map for dataset family {family!r}{known}; "
                          "use symmetric, pairflip or instance")
    return dict(ASYMMETRIC_CLASS_MAPS[family])


@register_noise_model(
    "asymmetric", takes_rate=True, summary="exactly round(r*n_c) samples of each source class flip to its mapped class"
)
def _asymmetric(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
    assert spec.rate is not None
    mapping = asymmetric_class_map(inputs.family, labels=inputs.labels, coarse_labels=inputs.coarse_labels)
    expected = 100 if inputs.family == "cifar100" else 10
    if inputs.num_classes != expected:
        raise KnnmixError(f"asymmetric noise for dataset family {inputs.family!r} maps {expected} classes, but "
                          f"num_classes is {inputs.num_classes}")
    return flip_within_classes(inputs.labels, mapping, spec.rate, inputs.rng)


@register_noise_model("pairflip", takes_rate=True, summary="exactly round(r*n_c) samples of class c flip to c+1 mod C")
def _pairflip(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
    assert spec.rate is not None
    c = inputs.num_classes
    return flip_within_classes(inputs.labels, {k: (k + 1) % c for k in range(c)}, spec.rate, inputs.rng)


def _flip_rate(rate: float, std: float) -> Any:
    """The per-sample flip rate of ``instance:rate``: ``N(rate, std^2)`` truncated to [0, 1], a frozen scipy
    distribution."""
    from scipy.stats import truncnorm

    return truncnorm(-rate / std, (1.0 - rate) / std, loc=rate, scale=std)


def instance_expected_rate(rate: float, std: float = 0.1) -> float:
    """Expected measured rate of ``instance:rate``: the mean of ``N(rate, std^2)`` truncated to [0, 1].

    It exceeds ``rate`` noticeably at small rates, e.g. 0.1288 for ``rate=0.1, std=0.1`` (0 for ``rate=0``:
    ``instance:0`` is parsed as ``none``).
    """
    return 0.0 if rate == 0 else float(_flip_rate(rate, std).mean())


@register_noise_model(
    "instance", takes_rate=True, summary="instance-dependent noise of Xia et al. (NeurIPS 2020), needs features"
)
def _instance(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
    """Part/instance-dependent noise, following ``get_instance_noisy_label`` of Xia et al. (2020).

    Per sample ``i`` with features ``x_i`` (D,) and label ``y_i``:
    ``q_i ~ N(r, std^2)`` truncated to [0, 1]; ``a = x_i @ W[y_i]`` with ``W ~ N(0, 1)`` of shape (C, D, C);
    ``a[y_i] = -inf``; ``p = q_i * softmax(a)``; ``p[y_i] = 1 - q_i``; new label ``~ p``.

    The draw from ``p`` is done in two equivalent stages: flip iff ``u_i < q_i``, then pick the new class
    from ``softmax(a)`` (which gives the true class probability 0). RNG order: ``q`` (N), flip uniforms (N),
    class uniforms (N), then ``W[c]`` (D, C) float32 for ``c = 0 .. C-1``. Only flipped samples need their
    projection, computed class by class: memory is O(n_c * (D + C)), never (N, D, C).
    """
    assert spec.rate is not None
    if inputs.features is None:
        raise KnnmixError("instance noise needs features: the (N, D) flattened training images in [0, 1] (pass "
                          "features=...)")
    x = inputs.features
    if x.dtype.kind == "f" and not all(np.isfinite(x[i : i + 4096]).all() for i in range(0, x.shape[0], 4096)):
        raise KnnmixError("features for instance noise contain nan or inf values")
    labels, c, rng = inputs.labels, inputs.num_classes, inputs.rng
    n, d = x.shape
    q = np.clip(_flip_rate(spec.rate, inputs.instance_std).rvs(size=n, random_state=rng), 0.0, 1.0)
    flipped = np.flatnonzero(rng.random(n) < q)
    u = rng.random(n)

    noisy = np.array(labels, dtype=np.int64, copy=True)
    by_class = flipped[np.argsort(labels[flipped], kind="stable")]
    bounds = np.searchsorted(labels[by_class], np.arange(c + 1))
    for k in range(c):
        w = rng.standard_normal((d, c), dtype=np.float32)  # W[k], drawn for every class to fix the RNG order
        idx = by_class[bounds[k] : bounds[k + 1]]
        if idx.size == 0:
            continue
        logits = (np.asarray(x[idx], dtype=np.float32) @ w).astype(np.float64)  # (n_k, C)
        logits[:, k] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        cum = np.cumsum(np.exp(logits), axis=1)  # unnormalised softmax CDF; class k adds 0
        v = u[idx] * cum[:, -1]
        noisy[idx] = (cum <= v[:, None]).sum(axis=1)  # first class whose CDF exceeds v; never k
    return noisy
