"""Core of :mod:`knnmix.noise`: the model registry, noise specs, :func:`apply_noise` and transition matrices.

A noise model is a function ``generate(spec, inputs) -> (N,) int64 labels`` registered by name in
:data:`NOISE_MODELS`. Everything around it (spec parsing, input checks, measured rate, transition matrix) is
shared, so a new model is one registered function and nothing else.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from knnmix.errors import KnnmixError, did_you_mean
from knnmix.registry import Registry

#: ``"other"``: a flipped label moves to a uniformly chosen other class; ``"any"``: it is redrawn among all classes.
SYMMETRIC_CONVENTIONS = ("other", "any")


@dataclass(frozen=True)
class NoiseInputs:
    """Everything a noise model may use, already validated by :func:`apply_noise`.

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
    """A registered noise model; it takes a rate (``"symmetric:0.4"``), a variant (``"cifar10n:worse"``) or
    nothing (``"none"``)."""

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


def _model(kind: object, text: str) -> NoiseModel:
    """The registered model called ``kind``; ``text`` is the spec as the user wrote it, for the error message."""
    if not isinstance(kind, str) or kind not in NOISE_MODELS:
        names = NOISE_MODELS.names()
        raise KnnmixError(f"unknown noise model {kind!r} in noise spec {text!r}{did_you_mean(kind, names)}; "
                          f"choose one of: {', '.join(names)}")
    return NOISE_MODELS.get(kind)


def _checked_arg(
    model: NoiseModel, rate: object, variant: object, text: str, shown: str
) -> tuple[float | None, str | None]:
    """``(rate, variant)`` of a spec of ``model``, validated: ``rate`` a float in [0, 1) for a model taking a rate,
    ``variant`` one of ``model.variants`` for a model taking one, rate ``0.0`` for a model taking neither.

    ``text`` is the whole spec and ``shown`` the rate as the user wrote them, for the error messages.
    """
    kind = model.name
    if model.takes_rate:
        if variant is not None:
            raise KnnmixError(f"noise model {kind!r} takes a rate, not a variant; got {variant!r}")
        if rate is None:
            raise KnnmixError(f"noise spec {text!r} needs a rate, e.g. '{kind}:0.4'")
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
            raise KnnmixError(f"noise rate {shown} in {text!r} is not a number")
        if not 0.0 <= rate < 1.0:  # also rejects nan
            raise KnnmixError(f"noise rate {shown} in {text!r} is outside [0, 1)")
        return float(rate), None
    if model.variants:
        choices = ", ".join(model.variants)
        if rate is not None:
            raise KnnmixError(f"noise model {kind!r} takes a variant, not a rate; got {rate!r}")
        if variant is None:
            raise KnnmixError(f"noise spec {text!r} needs a variant; choose one of {choices}")
        if variant not in model.variants:
            close = did_you_mean(variant, model.variants)
            raise KnnmixError(f"unknown {kind} variant {variant!r}{close}; choose one of {choices}")
        return None, str(variant)
    if variant is not None or not (rate is None or rate == 0):
        raise KnnmixError(f"noise model {kind!r} takes no rate or variant, got {text!r}")
    return 0.0, None


@dataclass(frozen=True)
class NoiseSpec:
    """A validated noise model choice: a registered model name ``kind`` (see :func:`parse_noise_spec`) plus the
    nominal rate in [0, 1) of a synthetic kind (``0.0`` for ``none``, ``None`` for the CIFAR-N kinds) or the variant
    of a CIFAR-N kind (else ``None``). Built by :func:`parse_noise_spec` or directly, the fields are checked either
    way. ``str(spec)`` is the canonical spec string, which :func:`parse_noise_spec` reads back to an equal spec.
    """

    kind: str
    rate: float | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        arg = self.variant if self.variant is not None else self.rate
        text = str(self.kind) if arg is None else f"{self.kind}:{arg}"
        rate, _ = _checked_arg(_model(self.kind, text), self.rate, self.variant, text, repr(self.rate))
        object.__setattr__(self, "rate", rate)

    def __str__(self) -> str:
        arg = self.rate if NOISE_MODELS.get(self.kind).takes_rate else self.variant
        return self.kind if arg is None else f"{self.kind}:{arg}"

    def canonical(self) -> NoiseSpec:
        """This spec, except that a synthetic model at rate 0 becomes ``none`` (no label changes)."""
        return NoiseSpec("none") if self.rate == 0 and self.kind != "none" else self


def parse_noise_spec(spec: str | NoiseSpec) -> NoiseSpec:
    """Parse and validate a noise spec string; needs no data, so configs can be checked up front.

    ``spec`` is ``"none"``; ``"<kind>:<rate>"`` with kind ``symmetric``, ``asymmetric``, ``pairflip`` or
    ``instance`` and rate in [0, 1) (e.g. ``"symmetric:0.4"``); ``"cifar10n:<aggre|random1|random2|random3|worse>"``;
    or ``"cifar100n:noisy"``. Case and surrounding spaces are ignored. A synthetic kind at rate 0 (``"symmetric:0"``)
    means no noise and gives ``NoiseSpec("none", 0.0, None)``; a :class:`NoiseSpec` is returned in that canonical form.

    Bad input raises a one-line :class:`KnnmixError` naming the bad value, e.g. ``unknown noise model 'symetric' in
    noise spec 'symetric:0.4' (did you mean 'symmetric'?); ...`` or ``noise rate 1.2 in 'symmetric:1.2' is outside
    [0, 1)``.
    """
    if isinstance(spec, NoiseSpec):
        return spec.canonical()
    if not isinstance(spec, str):
        raise KnnmixError(f"noise spec must be a string such as 'symmetric:0.4' or 'none', got {spec!r}")
    text = spec.strip()
    if not text:
        raise KnnmixError("empty noise spec; use 'none' or e.g. 'symmetric:0.4'")
    kind, _, arg = (part.strip() for part in text.partition(":"))
    model = _model(kind.lower() if kind.lower() in NOISE_MODELS else kind, text)
    rate: float | None = None
    variant: str | None = None
    if model.variants:
        variant = (arg.lower() if arg.lower() in model.variants else arg) or None
    elif arg:
        try:
            rate = float(arg)
        except ValueError:
            if model.takes_rate:
                try:  # "40%": suggest 0.4
                    suggestion = f" (write {arg} as {float(arg[:-1]) / 100:g})" if arg.endswith("%") else ""
                except ValueError:
                    suggestion = ""
                raise KnnmixError(f"noise rate {arg!r} in {text!r} is not a number{suggestion}") from None
            variant = arg  # refused by _checked_arg: the model takes no rate or variant
    rate, variant = _checked_arg(model, rate, variant, text, arg)
    return NoiseSpec(model.name, rate, variant).canonical()


@dataclass(frozen=True, eq=False)
class NoiseResult:
    """Noisy labels plus what was measured about them."""

    noisy_labels: np.ndarray  # (N,) int64, the labels to train on
    noise_rate: float  # measured mean(noisy_labels != clean_labels)
    transition: np.ndarray  # (C, C) float64 empirical T[i, j] = P(noisy = j | true = i), see transition_matrix
    spec: str  # canonical spec string, e.g. "symmetric:0.4" ("none" for any rate-0 spec)
    clean_labels: np.ndarray  # (N,) int64 copy of the clean labels the noise was applied to

    @property
    def is_noisy(self) -> np.ndarray:
        """``(N,)`` bool, True where the noisy label differs from the clean one."""
        return np.asarray(self.noisy_labels != self.clean_labels)


def _label_array(x: object, name: str, num_classes: int | None = None, context: str = "") -> np.ndarray:
    """``x`` as a 1-D integer array with entries in ``[0, num_classes)`` (``>= 0`` without ``num_classes``)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise KnnmixError(f"{name} must be a 1-D array (N,), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise KnnmixError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            bound = "be >= 0" if num_classes is None else f"lie in [0, {num_classes}){context}"
            raise KnnmixError(f"{name} must {bound}; found {lo if lo < 0 else hi}")
    return arr


def transition_matrix(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical label transition matrix of ``(N,)`` integer clean and noisy labels in ``[0, num_classes)``.

    Returns ``(C, C)`` float64 ``T[i, j] = #{n : true[n] = i, noisy[n] = j} / #{n : true[n] = i}``. Each row sums
    to 1; a class without samples gets the identity row ``T[i, i] = 1``.
    """
    c = _check_int(num_classes, "num_classes", 1)
    t = _label_array(true, "true labels", c).astype(np.int64)
    n = _label_array(noisy, "noisy labels", c).astype(np.int64)
    if t.shape != n.shape:
        raise KnnmixError(f"true and noisy labels differ in length: {t.shape[0]} vs {n.shape[0]}")
    counts = np.bincount(t * c + n, minlength=c * c).reshape(c, c)
    totals = counts.sum(axis=1, keepdims=True)
    out = np.divide(counts, totals, out=np.zeros((c, c), dtype=np.float64), where=totals > 0)
    empty = np.flatnonzero(totals[:, 0] == 0)
    out[empty, empty] = 1.0
    return out


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise KnnmixError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _readonly(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


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
    spec: str | NoiseSpec, labels: np.ndarray, num_classes: int, *, seed: int, family: str = "generic",
    coarse_labels: np.ndarray | None = None, features: np.ndarray | None = None,
    cifar_n_dir: str | os.PathLike[str] | None = None, symmetric_convention: str = "other", instance_std: float = 0.1,
) -> NoiseResult:
    """Corrupt ``(N,)`` integer clean ``labels`` in ``[0, num_classes)`` (``C >= 2``) with the noise model ``spec``.

    Deterministic: the same arguments give identical labels; all randomness comes from
    ``np.random.default_rng(seed)`` (``seed >= 0``). Input arrays are never modified.

    - ``spec``: noise spec string or :class:`NoiseSpec`, see :func:`parse_noise_spec`.
    - ``family``: ``digits``, ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``generic``; selects the asymmetric
      class map and is checked by the CIFAR-N kinds.
    - ``coarse_labels``: ``(N,)`` integer CIFAR-100 super-class labels; required by ``asymmetric`` on ``cifar100``.
    - ``features``: ``(N, D)`` real flattened images, expected in [0, 1] (float32 preferred); required by ``instance``.
    - ``cifar_n_dir``: folder holding ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` (``~`` is the home folder, as
      in ``data.root``); required by ``cifar10n`` / ``cifar100n``.
    - ``symmetric_convention``: ``"other"``: a flipped label moves to a uniformly chosen other class (measured rate
      = r). ``"any"`` (DivideMix): it is redrawn among all C classes (measured rate about ``r * (C - 1) / C``).
    - ``instance_std``: std of the truncated-normal per-sample flip rate of ``instance`` (Xia et al. use 0.1).

    Returns the noisy labels ``(N,)`` int64, measured rate, empirical transition matrix ``(C, C)`` and canonical
    spec as a :class:`NoiseResult`. Any bad argument or missing input raises a one-line :class:`KnnmixError`.
    """
    parsed = parse_noise_spec(spec)
    c = _check_int(num_classes, "num_classes", 2)
    seed_value = _check_int(seed, "seed", 0)
    if not isinstance(family, str) or not family:
        raise KnnmixError(f"family must be a dataset family name such as 'cifar10' or 'generic', got {family!r}")
    if symmetric_convention not in SYMMETRIC_CONVENTIONS:
        raise KnnmixError(f"unknown symmetric_convention {symmetric_convention!r}; choose one of "
                          f"{', '.join(SYMMETRIC_CONVENTIONS)}")
    is_real = isinstance(instance_std, numbers.Real) and not isinstance(instance_std, bool)
    if not (is_real and math.isfinite(instance_std) and instance_std > 0):
        raise KnnmixError(f"instance_std must be a positive number, got {instance_std!r}")
    if cifar_n_dir is not None and not isinstance(cifar_n_dir, (str, os.PathLike)):
        raise KnnmixError(f"cifar_n_dir must be a folder path, got {cifar_n_dir!r}")

    clean = _readonly(_label_array(labels, "labels", c, f" for num_classes={c}").astype(np.int64, copy=False))
    n = clean.shape[0]
    if n == 0:
        raise KnnmixError("labels is empty; noise needs at least one sample")
    coarse = None
    if coarse_labels is not None:
        if np.shape(coarse_labels) != (n,):
            raise KnnmixError(f"coarse_labels must have shape ({n},) like labels, got {np.shape(coarse_labels)}")
        coarse = _readonly(_label_array(coarse_labels, "coarse_labels").astype(np.int64, copy=False))
    inputs = NoiseInputs(
        labels=clean, num_classes=c, rng=np.random.default_rng(seed_value), family=family, coarse_labels=coarse,
        features=_check_features(features, n),
        cifar_n_dir=None if cifar_n_dir is None else Path(cifar_n_dir).expanduser(),
        symmetric_convention=symmetric_convention, instance_std=float(instance_std),
    )
    noisy = np.asarray(NOISE_MODELS.get(parsed.kind).generate(parsed, inputs))
    if noisy.shape != (n,) or noisy.dtype.kind not in "iu" or noisy.min() < 0 or noisy.max() >= c:
        raise RuntimeError(f"noise model {parsed.kind!r} returned {noisy.dtype} {noisy.shape} labels, expected int "
                           f"({n},) in [0, {c})")
    noisy = np.array(noisy, dtype=np.int64)  # always a copy: the caller's to modify, never a view of its input
    clean_copy = np.array(clean, dtype=np.int64, copy=True)
    return NoiseResult(noisy_labels=noisy, noise_rate=float(np.mean(noisy != clean_copy)),
                       transition=transition_matrix(clean_copy, noisy, c), spec=str(parsed), clean_labels=clean_copy)
