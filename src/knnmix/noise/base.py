"""Core types of :mod:`knnmix.noise`: specs, results, the model registry and empirical transition matrices.

A noise model is a :class:`NoiseModel` registered by name in :data:`NOISE_MODELS`. Its ``generate`` function
receives the validated :class:`NoiseSpec` and :class:`NoiseInputs` and returns new labels; everything around it
(spec parsing, input checks, measured rate, transition matrix) is shared, so a new model is one registered
function and nothing else.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from knnmix.errors import KnnmixError
from knnmix.registry import Registry

__all__ = [
    "NOISE_MODELS",
    "NoiseGenerator",
    "NoiseInputs",
    "NoiseModel",
    "NoiseResult",
    "NoiseSpec",
    "exact_count",
    "flip_within_classes",
    "register_noise_model",
    "transition_matrix",
]


@dataclass(frozen=True)
class NoiseInputs:
    """Everything a noise model may use, already validated by :func:`knnmix.noise.apply_noise`.

    Arrays are read-only views: a model must return new labels and never write into its inputs.
    """

    labels: np.ndarray  # (N,) int64 clean labels in [0, num_classes)
    num_classes: int  # C >= 2
    rng: np.random.Generator  # the only source of randomness, np.random.default_rng(seed)
    family: str  # dataset family: digits, fashion-mnist, cifar10, cifar100, generic, ...
    coarse_labels: np.ndarray | None  # (N,) int64 super-class labels, or None
    features: np.ndarray | None  # (N, D) real flattened images, or None
    cifar_n_dir: Path | None  # folder holding CIFAR-10_human.pt / CIFAR-100_human.pt, or None
    symmetric_convention: str  # "other" or "any"
    instance_std: float  # > 0


#: ``generate(spec, inputs) -> (N,) int64 noisy labels``.
NoiseGenerator = Callable[["NoiseSpec", NoiseInputs], np.ndarray]


@dataclass(frozen=True)
class NoiseModel:
    """A registered noise model.

    A model takes either a rate (``"symmetric:0.4"``), or a variant (``"cifar10n:worse"``), or nothing
    (``"none"``).
    """

    name: str
    generate: NoiseGenerator
    takes_rate: bool = False
    variants: tuple[str, ...] = ()
    summary: str = ""

    def __post_init__(self) -> None:
        if self.takes_rate and self.variants:
            raise RuntimeError(f"noise model {self.name!r} cannot take both a rate and variants")


NOISE_MODELS: Registry[NoiseModel] = Registry("noise model")


def register_noise_model(
    name: str, *, takes_rate: bool = False, variants: tuple[str, ...] = (), summary: str = ""
) -> Callable[[NoiseGenerator], NoiseGenerator]:
    """Decorator registering ``generate(spec, inputs) -> labels`` as noise model ``name`` in :data:`NOISE_MODELS`.

    >>> @register_noise_model("mymodel", takes_rate=True, summary="...")   # doctest: +SKIP
    ... def _mymodel(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray: ...
    """

    def deco(fn: NoiseGenerator) -> NoiseGenerator:
        NOISE_MODELS.register(name)(NoiseModel(name, fn, takes_rate, tuple(variants), summary))
        return fn

    return deco


def _hint(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def lookup_model(kind: object, text: str) -> NoiseModel:
    """The registered model called ``kind``; ``text`` is the spec as the user wrote it, for the error message."""
    if not isinstance(kind, str) or kind not in NOISE_MODELS:
        names = NOISE_MODELS.names()
        hint = _hint(kind, names) if isinstance(kind, str) else ""
        raise KnnmixError(
            f"unknown noise model {kind!r} in noise spec {text!r}{hint}; choose one of: {', '.join(names)}"
        )
    return NOISE_MODELS.get(kind)


def check_rate(value: object, shown: str, text: str) -> float:
    """``value`` as a float in [0, 1); ``shown`` is how the user wrote it, ``text`` the whole spec."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise KnnmixError(f"noise rate {shown} in {text!r} is not a number")
    rate = float(value)
    if not 0.0 <= rate < 1.0:  # also rejects nan
        raise KnnmixError(f"noise rate {shown} in {text!r} is outside [0, 1)")
    return rate


def check_variant(model: NoiseModel, variant: object) -> str:
    """``variant`` if it is one of ``model.variants``, else a :class:`KnnmixError` listing them."""
    if not isinstance(variant, str) or variant not in model.variants:
        hint = _hint(variant, model.variants) if isinstance(variant, str) else ""
        raise KnnmixError(
            f"unknown {model.name} variant {variant!r}{hint}; choose one of {', '.join(model.variants)}"
        )
    return variant


@dataclass(frozen=True)
class NoiseSpec:
    """A validated noise model choice: ``kind`` plus its rate or variant.

    Construct it with :func:`knnmix.noise.parse_noise_spec` (from ``"symmetric:0.4"``) or directly; either way the
    fields are checked against the registered model. ``str(spec)`` is the canonical spec string, which
    :func:`~knnmix.noise.parse_noise_spec` reads back to an equal spec.

    Attributes
    ----------
    kind
        Registered model name: ``none``, ``symmetric``, ``asymmetric``, ``pairflip``, ``instance``, ``cifar10n``,
        ``cifar100n``.
    rate
        Nominal noise rate in [0, 1) for the synthetic kinds; ``0.0`` for ``none``; ``None`` for the CIFAR-N kinds.
    variant
        ``aggre|random1|random2|random3|worse`` for ``cifar10n``, ``noisy`` for ``cifar100n``; else ``None``.
    """

    kind: str
    rate: float | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        text = self._display()
        model = lookup_model(self.kind, text)
        if model.takes_rate:
            if self.variant is not None:
                raise KnnmixError(f"noise model {self.kind!r} takes a rate, not a variant; got {self.variant!r}")
            if self.rate is None:
                raise KnnmixError(f"noise spec {self.kind!r} needs a rate, e.g. '{self.kind}:0.4'")
            object.__setattr__(self, "rate", check_rate(self.rate, repr(self.rate), text))
        elif model.variants:
            if self.rate is not None:
                raise KnnmixError(f"noise model {self.kind!r} takes a variant, not a rate; got {self.rate!r}")
            if self.variant is None:
                raise KnnmixError(
                    f"noise spec {self.kind!r} needs a variant; choose one of {', '.join(model.variants)}"
                )
            check_variant(model, self.variant)
        else:
            if self.variant is not None or not (self.rate is None or self.rate == 0):
                raise KnnmixError(f"noise model {self.kind!r} takes no rate or variant, got {text!r}")
            object.__setattr__(self, "rate", 0.0)

    def _display(self) -> str:
        arg = self.variant if self.variant is not None else self.rate
        return str(self.kind) if arg is None else f"{self.kind}:{arg}"

    def __str__(self) -> str:
        model = NOISE_MODELS.get(self.kind)
        if model.takes_rate:
            return f"{self.kind}:{self.rate!r}"
        if model.variants:
            return f"{self.kind}:{self.variant}"
        return self.kind

    def canonical(self) -> NoiseSpec:
        """This spec, except that a synthetic model at rate 0 becomes ``none`` (no label changes)."""
        if self.rate == 0 and self.kind != "none":
            return NoiseSpec("none")
        return self


@dataclass(frozen=True, eq=False)
class NoiseResult:
    """Noisy labels plus what was measured about them.

    Attributes
    ----------
    noisy_labels
        ``(N,)`` int64, the labels to train on.
    noise_rate
        Measured rate ``mean(noisy_labels != clean_labels)``.
    transition
        ``(C, C)`` float64 empirical ``T[i, j] = P(noisy = j | true = i)``; see :func:`transition_matrix`.
    spec
        Canonical spec string, e.g. ``"symmetric:0.4"`` (``"none"`` for any rate-0 spec).
    clean_labels
        ``(N,)`` int64 copy of the clean labels the noise was applied to.
    """

    noisy_labels: np.ndarray
    noise_rate: float
    transition: np.ndarray
    spec: str
    clean_labels: np.ndarray

    @property
    def is_noisy(self) -> np.ndarray:
        """``(N,)`` bool, True where the noisy label differs from the clean one."""
        return np.asarray(self.noisy_labels != self.clean_labels)

    @property
    def num_classes(self) -> int:
        """``C``, the number of classes."""
        return int(self.transition.shape[0])


def _as_label_array(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise KnnmixError(f"{name} must be a 1-D array (N,), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise KnnmixError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


def transition_matrix(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical label transition matrix.

    Parameters
    ----------
    true
        ``(N,)`` integer clean labels in ``[0, num_classes)``.
    noisy
        ``(N,)`` integer noisy labels in ``[0, num_classes)``.
    num_classes
        ``C``.

    Returns
    -------
    np.ndarray
        ``(C, C)`` float64, ``T[i, j] = #{n : true[n] = i, noisy[n] = j} / #{n : true[n] = i}``. Each row sums
        to 1; a class without samples gets the identity row ``T[i, i] = 1``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise KnnmixError(f"num_classes must be a positive integer, got {num_classes!r}")
    c = int(num_classes)
    t = _as_label_array(true, "true labels")
    n = _as_label_array(noisy, "noisy labels")
    if t.shape != n.shape:
        raise KnnmixError(f"true and noisy labels differ in length: {t.shape[0]} vs {n.shape[0]}")
    for arr, name in ((t, "true labels"), (n, "noisy labels")):
        if arr.size and (arr.min() < 0 or arr.max() >= c):
            bad = arr.min() if arr.min() < 0 else arr.max()
            raise KnnmixError(f"{name} must lie in [0, {c}); found {int(bad)}")
    counts = np.bincount(t.astype(np.int64) * c + n.astype(np.int64), minlength=c * c).reshape(c, c)
    totals = counts.sum(axis=1, keepdims=True)
    out = np.divide(counts, totals, out=np.zeros((c, c), dtype=np.float64), where=totals > 0)
    empty = np.flatnonzero(totals[:, 0] == 0)
    out[empty, empty] = 1.0
    return out


def exact_count(rate: float, n: int) -> int:
    """``round(rate * n)`` with halves rounded up: how many of ``n`` samples a rate-``rate`` model flips."""
    return min(n, int(math.floor(rate * n + 0.5)))


def flip_within_classes(
    labels: np.ndarray, class_map: dict[int, int], rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Flip exactly ``round(rate * n_s)`` random samples of each source class ``s`` to ``class_map[s]``.

    Source classes are visited in ascending order; each draws one permutation of its sample indices and flips
    a prefix of it, so with the same seed the samples flipped at a lower rate are a subset of those flipped
    at a higher rate.

    Parameters
    ----------
    labels
        ``(N,)`` int64 clean labels (not modified).
    class_map
        ``{source class: target class}``; entries mapping a class to itself flip nothing.
    rate
        Fraction in [0, 1) of each source class to flip.
    rng
        Random generator.

    Returns
    -------
    np.ndarray
        ``(N,)`` int64 new labels.
    """
    noisy = np.array(labels, dtype=np.int64, copy=True)
    for src in sorted(class_map):
        idx = np.flatnonzero(labels == src)
        chosen = rng.permutation(idx)[: exact_count(rate, idx.size)]
        noisy[chosen] = class_map[src]
    return noisy
