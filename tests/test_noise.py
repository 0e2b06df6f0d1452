"""Tests of knnmix.noise: spec parsing, every noise model, transition matrices and the real CIFAR-N labels."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from knnmix.errors import KnnmixError
from knnmix.noise import (
    NOISE_KINDS,
    NOISE_MODELS,
    NoiseInputs,
    NoiseResult,
    NoiseSpec,
    apply_noise,
    instance_expected_rate,
    load_cifar_n_file,
    parse_noise_spec,
    register_noise_model,
    transition_matrix,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# The literature's asymmetric class maps, written out here independently of the implementation.
CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck->automobile, bird->airplane, deer->horse, cat<->dog
DIGITS_MAP = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}  # Patrini et al. 2017
FASHION_MAP = {0: 6, 2: 4, 4: 2, 7: 5, 9: 7}  # T-shirt->Shirt, Pullover<->Coat, Sneaker->Sandal, Boot->Sneaker


def balanced_labels(num_classes: int, per_class: int, seed: int = 123) -> np.ndarray:
    """``(num_classes * per_class,)`` int64 labels, each class ``per_class`` times, in random order."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(seed).permutation(labels)


def synthetic_coarse(num_fine: int = 100, group: int = 5, seed: int = 7) -> np.ndarray:
    """``(num_fine,)`` super-class of each fine class: a random (non-contiguous) partition into groups of 5."""
    perm = np.random.default_rng(seed).permutation(num_fine)
    coarse_of_fine = np.empty(num_fine, dtype=np.int64)
    coarse_of_fine[perm] = np.arange(num_fine) // group
    return coarse_of_fine


def expected_map_matrix(mapping: dict[int, int], rate_per_class: dict[int, float], num_classes: int) -> np.ndarray:
    t = np.eye(num_classes)
    for src, dst in mapping.items():
        t[src, src] = 1.0 - rate_per_class[src]
        t[src, dst] += rate_per_class[src]
    return t


def exact_rate(rate: float, n: int) -> float:
    """Fraction flipped out of ``n`` at ``rate`` when exactly round-half-up(rate * n) samples flip."""
    return int(np.floor(rate * n + 0.5)) / n


# ------------------------------------------------------------------------------------------ every model
@dataclass
class Case:
    id: str
    spec: str
    num_classes: int
    labels: np.ndarray
    kwargs: dict[str, Any] = field(default_factory=dict)
    expected_rate: float = 0.0
    tol: float = 0.0
    random: bool = True  # does the seed matter?


def _cases() -> list[Case]:
    y10 = balanced_labels(10, 200)  # N = 2000, 200 per class
    y100 = balanced_labels(100, 20)  # N = 2000, 20 per class
    coarse_of_fine = synthetic_coarse()
    feats = np.random.default_rng(5).random((2000, 32), dtype=np.float32)
    return [
        Case("none", "none", 10, y10, random=False),
        Case("symmetric-other", "symmetric:0.4", 10, y10, expected_rate=0.4),
        Case(
            "symmetric-any", "symmetric:0.4", 10, y10, {"symmetric_convention": "any"}, expected_rate=0.36, tol=0.025
        ),
        Case("asymmetric-cifar10", "asymmetric:0.4", 10, y10, {"family": "cifar10"}, expected_rate=0.2),
        Case("asymmetric-digits", "asymmetric:0.4", 10, y10, {"family": "digits"}, expected_rate=0.2),
        Case("asymmetric-fashion", "asymmetric:0.4", 10, y10, {"family": "fashion-mnist"}, expected_rate=0.2),
        Case(
            "asymmetric-cifar100",
            "asymmetric:0.4",
            100,
            y100,
            {"family": "cifar100", "coarse_labels": coarse_of_fine[y100]},
            expected_rate=0.4,
        ),
        Case("pairflip", "pairflip:0.45", 10, y10, expected_rate=0.45),
        Case("instance", "instance:0.4", 10, y10, {"features": feats}, expected_rate=0.4, tol=0.04),
    ]


CASES = _cases()
RANDOM_CASES = [c for c in CASES if c.random]


def run(case: Case, seed: int = 0, **overrides: Any) -> NoiseResult:
    return apply_noise(case.spec, case.labels, case.num_classes, seed=seed, **{**case.kwargs, **overrides})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_result_contract_and_rate(case: Case) -> None:
    res = run(case)
    noisy, clean = res.noisy_labels, case.labels
    assert noisy.shape == clean.shape and noisy.dtype == np.int64
    assert noisy.min() >= 0 and noisy.max() < case.num_classes
    assert res.noise_rate == pytest.approx(np.mean(noisy != clean), abs=0)
    np.testing.assert_array_equal(res.is_noisy, noisy != clean)
    np.testing.assert_array_equal(res.clean_labels, clean)
    assert res.transition.shape == (case.num_classes, case.num_classes) and res.transition.dtype == np.float64
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(res.transition, transition_matrix(clean, noisy, case.num_classes))
    assert abs(res.noise_rate - case.expected_rate) <= case.tol + 1e-12, (res.noise_rate, case.expected_rate)
    assert res.spec == str(parse_noise_spec(case.spec))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_deterministic_under_seed(case: Case) -> None:
    a, b = run(case, seed=3), run(case, seed=3)
    np.testing.assert_array_equal(a.noisy_labels, b.noisy_labels)
    np.testing.assert_array_equal(a.transition, b.transition)
    assert a.noise_rate == b.noise_rate


@pytest.mark.parametrize("case", RANDOM_CASES, ids=lambda c: c.id)
def test_different_seed_gives_different_labels(case: Case) -> None:
    a, b = run(case, seed=0), run(case, seed=1)
    assert not np.array_equal(a.noisy_labels, b.noisy_labels)
    assert not np.array_equal(a.is_noisy, b.is_noisy)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_inputs_not_mutated(case: Case) -> None:
    labels = case.labels.copy()
    kwargs = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in case.kwargs.items()}
    originals = [labels.copy()] + [v.copy() for v in kwargs.values() if isinstance(v, np.ndarray)]
    for arr in [labels] + [v for v in kwargs.values() if isinstance(v, np.ndarray)]:
        arr.flags.writeable = False  # any write attempt would raise
    res = apply_noise(case.spec, labels, case.num_classes, seed=0, **kwargs)
    after = [labels] + [v for v in kwargs.values() if isinstance(v, np.ndarray)]
    for before, now in zip(originals, after, strict=True):
        np.testing.assert_array_equal(before, now)
    assert not np.shares_memory(res.noisy_labels, labels)
    res.noisy_labels[0] = (res.noisy_labels[0] + 1) % case.num_classes  # the result is the caller's to modify
    np.testing.assert_array_equal(labels, originals[0])


def test_none_and_rate_zero_leave_labels_unchanged() -> None:
    y = balanced_labels(10, 50)
    feats = np.random.default_rng(0).random((500, 8), dtype=np.float32)
    for spec in ["none", "symmetric:0", "pairflip:0.0", "instance:0", NoiseSpec("instance", 0.0)]:
        res = apply_noise(spec, y, 10, seed=0, features=feats)
        np.testing.assert_array_equal(res.noisy_labels, y)
        assert res.noise_rate == 0.0 and res.spec == "none"
        np.testing.assert_array_equal(res.transition, np.eye(10))


# ----------------------------------------------------------------------------------------------- symmetric
@pytest.mark.parametrize(("n", "rate", "flips"), [(1000, 0.4, 400), (999, 0.25, 250), (10, 0.25, 3), (7, 0.2, 1)])
def test_symmetric_other_flips_exactly_round_rN_and_never_keeps_the_label(n: int, rate: float, flips: int) -> None:
    y = np.random.default_rng(n).integers(0, 10, n)
    for seed in range(5):
        res = apply_noise(f"symmetric:{rate}", y, 10, seed=seed)
        # exactly round(r*N) samples are chosen; every one of them changed, so none kept its true label
        assert int(res.is_noisy.sum()) == flips
        assert res.noise_rate == flips / n


def test_symmetric_other_targets_are_uniform_over_other_classes() -> None:
    y = balanced_labels(5, 4000)
    res = apply_noise("symmetric:0.4", y, 5, seed=0)
    off = res.transition[~np.eye(5, dtype=bool)]
    np.testing.assert_allclose(off, 0.4 / 4, atol=0.02)
    np.testing.assert_allclose(np.diag(res.transition), 0.6, atol=0.02)


def test_symmetric_any_convention_rate_is_r_times_c_minus_1_over_c() -> None:
    y = np.random.default_rng(0).integers(0, 10, 100_000)
    res = apply_noise("symmetric:0.5", y, 10, seed=0, symmetric_convention="any")
    assert res.noise_rate == pytest.approx(0.5 * 9 / 10, abs=0.005)
    assert res.noise_rate < 0.49  # clearly below the "other" convention's exact 0.5
    other = apply_noise("symmetric:0.5", y, 10, seed=0, symmetric_convention="other")
    assert other.noise_rate == 0.5


def test_symmetric_lower_rate_flips_are_a_subset_of_higher_rate_flips() -> None:
    y = np.random.default_rng(1).integers(0, 10, 3000)
    low, high = (apply_noise(f"symmetric:{r}", y, 10, seed=11) for r in (0.2, 0.4))
    assert np.all(high.is_noisy[low.is_noisy])
    np.testing.assert_array_equal(low.noisy_labels[low.is_noisy], high.noisy_labels[low.is_noisy])


# ---------------------------------------------------------------------------------------------- asymmetric
@pytest.mark.parametrize(
    ("family", "mapping"), [("cifar10", CIFAR10_MAP), ("digits", DIGITS_MAP), ("fashion-mnist", FASHION_MAP)]
)
def test_asymmetric_transition_matches_class_map(family: str, mapping: dict[int, int]) -> None:
    # unbalanced classes so that per-class rounding is exercised
    counts = np.array([130, 170, 203, 97, 151, 249, 120, 188, 75, 111])
    y = np.random.default_rng(2).permutation(np.repeat(np.arange(10), counts))
    rate = 0.35
    res = apply_noise(f"asymmetric:{rate}", y, 10, seed=4, family=family)
    per_class = {s: exact_rate(rate, int(counts[s])) for s in mapping}
    np.testing.assert_allclose(res.transition, expected_map_matrix(mapping, per_class, 10), atol=1e-12)
    sources = np.isin(y, list(mapping))
    expected_overall = sum(round(per_class[s] * counts[s]) for s in mapping) / y.size
    assert res.noise_rate == pytest.approx(expected_overall, abs=1e-12)
    assert res.noise_rate == pytest.approx(rate * sources.mean(), abs=0.01)  # r x fraction in source classes


def test_asymmetric_cifar10_named_entries() -> None:
    y = balanced_labels(10, 500)
    res = apply_noise("asymmetric:0.4", y, 10, seed=0, family="cifar10")
    t = res.transition
    assert t[9, 1] == pytest.approx(0.4) and t[9, 9] == pytest.approx(0.6)  # truck -> automobile
    assert t[2, 0] == pytest.approx(0.4) and t[4, 7] == pytest.approx(0.4)  # bird -> airplane, deer -> horse
    assert t[3, 5] == pytest.approx(0.4) and t[5, 3] == pytest.approx(0.4)  # cat <-> dog
    for untouched in (0, 1, 6, 7, 8):
        assert t[untouched, untouched] == 1.0


def test_asymmetric_cifar100_flips_to_next_class_within_superclass() -> None:
    coarse_of_fine = synthetic_coarse(seed=99)
    y = balanced_labels(100, 30)
    res = apply_noise("asymmetric:0.4", y, 100, seed=0, family="cifar100", coarse_labels=coarse_of_fine[y])
    expected_next = {}
    for sup in range(20):
        group = np.sort(np.flatnonzero(coarse_of_fine == sup))
        assert group.size == 5
        for i, fine in enumerate(group):
            expected_next[int(fine)] = int(group[(i + 1) % 5])
    flipped = res.is_noisy
    assert flipped.sum() == 100 * 12  # round(0.4 * 30) per class
    np.testing.assert_array_equal(coarse_of_fine[res.noisy_labels], coarse_of_fine[y])  # stays in superclass
    np.testing.assert_array_equal(res.noisy_labels[flipped], [expected_next[int(v)] for v in y[flipped]])
    for fine, nxt in expected_next.items():
        assert res.transition[fine, nxt] == pytest.approx(0.4)
    # contiguous blocks of 5 ids (the common but wrong "superclass" shortcut) are not what we use
    assert any(expected_next[f] != (f // 5) * 5 + (f % 5 + 1) % 5 for f in range(100))


# ------------------------------------------------------------------------------------------------ pairflip
def test_pairflip_moves_exactly_round_r_nc_of_each_class_to_the_next() -> None:
    counts = np.array([101, 55, 230, 77, 160, 90, 33, 149])
    y = np.random.default_rng(3).permutation(np.repeat(np.arange(8), counts))
    res = apply_noise("pairflip:0.45", y, 8, seed=0)
    per_class = {c: exact_rate(0.45, int(counts[c])) for c in range(8)}
    np.testing.assert_allclose(
        res.transition, expected_map_matrix({c: (c + 1) % 8 for c in range(8)}, per_class, 8), atol=1e-12
    )
    flips = sum(int(np.floor(0.45 * n + 0.5)) for n in counts)
    assert int(res.is_noisy.sum()) == flips


# ------------------------------------------------------------------------------------------------ instance
@pytest.fixture(scope="module")
def instance_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2024)
    y = rng.integers(0, 10, 5000)
    x1 = rng.random((5000, 64), dtype=np.float32)
    x2 = rng.random((5000, 64), dtype=np.float32)
    return y, x1, x2


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_instance_rate_close_to_target(instance_data: tuple[np.ndarray, ...], rate: float) -> None:
    y, x1, _ = instance_data
    res = apply_noise(f"instance:{rate}", y, 10, seed=0, features=x1)
    assert res.noise_rate == pytest.approx(rate, abs=0.025)


def test_instance_small_rate_is_the_truncated_normal_mean(instance_data: tuple[np.ndarray, ...]) -> None:
    y, x1, _ = instance_data
    assert instance_expected_rate(0.1, 0.1) == pytest.approx(0.1288, abs=1e-4)  # documented in docs/noise.md
    res = apply_noise("instance:0.1", y, 10, seed=0, features=x1)
    assert res.noise_rate == pytest.approx(0.1288, abs=0.02)
    assert res.noise_rate > 0.11  # clearly above the nominal 0.1
    narrow = apply_noise("instance:0.1", y, 10, seed=0, features=x1, instance_std=0.01)
    assert narrow.noise_rate == pytest.approx(0.1, abs=0.02)


def test_instance_flips_depend_on_features(instance_data: tuple[np.ndarray, ...]) -> None:
    y, x1, x2 = instance_data
    a = apply_noise("instance:0.4", y, 10, seed=0, features=x1)
    b = apply_noise("instance:0.4", y, 10, seed=0, features=x2)
    assert not np.array_equal(a.noisy_labels, b.noisy_labels)
    # Which samples flip depends on the per-sample rate q_i only; where they go depends on the features.
    np.testing.assert_array_equal(a.is_noisy, b.is_noisy)
    both = a.is_noisy
    assert np.mean(a.noisy_labels[both] != b.noisy_labels[both]) > 0.5


def test_instance_targets_are_a_function_of_the_features() -> None:
    # Duplicate every sample: a flipped pair draws its targets from the same softmax(x @ W[y]); the softmax is
    # peaked, so the two targets agree far more often than the 1/(C-1) of feature-independent flips.
    rng = np.random.default_rng(8)
    y0 = rng.integers(0, 10, 3000)
    x0 = rng.random((3000, 64), dtype=np.float32)
    y, x = np.concatenate([y0, y0]), np.concatenate([x0, x0])
    res = apply_noise("instance:0.5", y, 10, seed=1, features=x)
    first, second = res.noisy_labels[:3000], res.noisy_labels[3000:]
    both = res.is_noisy[:3000] & res.is_noisy[3000:]
    assert both.sum() > 400
    assert np.mean(first[both] == second[both]) > 0.3  # 1/9 = 0.11 if targets ignored the features


def test_instance_never_flips_to_own_class_and_diag_matches_flip_rate(instance_data: tuple[np.ndarray, ...]) -> None:
    y, x1, _ = instance_data
    res = apply_noise("instance:0.4", y, 10, seed=5, features=x1)
    np.testing.assert_array_equal(res.is_noisy, res.noisy_labels != y)
    for c in range(10):
        assert res.transition[c, c] == pytest.approx(1.0 - res.is_noisy[y == c].mean(), abs=1e-12)
    # samples that kept their label are not counted as noisy
    assert res.noise_rate == pytest.approx(1.0 - np.trace(res.transition * np.bincount(y)[:, None]) / y.size)


def test_instance_is_vectorised_for_mnist_size() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 60_000)
    x = rng.random((60_000, 784), dtype=np.float32)
    start = time.perf_counter()
    res = apply_noise("instance:0.4", y, 10, seed=0, features=x)
    elapsed = time.perf_counter() - start
    assert res.noise_rate == pytest.approx(0.4, abs=0.01)
    assert elapsed < 10.0, f"instance noise took {elapsed:.1f} s for N=60000, D=784"


# ---------------------------------------------------------------------------------------- transition matrix
def test_transition_matrix_counts_and_identity_row_for_empty_class() -> None:
    true = np.array([0, 0, 0, 0, 1, 1, 3])
    noisy = np.array([0, 1, 1, 3, 1, 0, 3])
    t = transition_matrix(true, noisy, 4)
    expected = np.array(
        [[0.25, 0.5, 0.0, 0.25], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    np.testing.assert_array_equal(t, expected)
    assert t.dtype == np.float64


@pytest.mark.parametrize(
    ("true", "noisy", "c", "message"),
    [
        ([0, 1], [0], 2, "differ in length: 2 vs 1"),
        ([0, 5], [0, 1], 3, "found 5"),
        ([0, 1], [0, -1], 3, "found -1"),
        ([0.0, 1.0], [0, 1], 2, "dtype float64"),
        ([0, 1], [0, 1], 0, "got 0"),
    ],
)
def test_transition_matrix_errors(true: list[Any], noisy: list[Any], c: int, message: str) -> None:
    with pytest.raises(KnnmixError, match=re.escape(message)):
        transition_matrix(np.array(true), np.array(noisy), c)


# ---------------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("symmetric:0.4", NoiseSpec("symmetric", 0.4, None), "symmetric:0.4"),
        ("  Symmetric : 0.40 ", NoiseSpec("symmetric", 0.4, None), "symmetric:0.4"),
        ("asymmetric:0.4", NoiseSpec("asymmetric", 0.4, None), "asymmetric:0.4"),
        ("pairflip:0.45", NoiseSpec("pairflip", 0.45, None), "pairflip:0.45"),
        ("instance:0.4", NoiseSpec("instance", 0.4, None), "instance:0.4"),
        ("none", NoiseSpec("none", 0.0, None), "none"),
        ("symmetric:0", NoiseSpec("none", 0.0, None), "none"),
        ("cifar10n:worse", NoiseSpec("cifar10n", None, "worse"), "cifar10n:worse"),
        ("cifar10n:Random2", NoiseSpec("cifar10n", None, "random2"), "cifar10n:random2"),
        ("cifar100n:noisy", NoiseSpec("cifar100n", None, "noisy"), "cifar100n:noisy"),
    ],
)
def test_parse_noise_spec_valid(text: str, expected: NoiseSpec, canonical: str) -> None:
    spec = parse_noise_spec(text)
    assert spec == expected
    assert str(spec) == canonical
    assert parse_noise_spec(str(spec)) == spec  # canonical strings round-trip


def test_noise_kinds_and_registry() -> None:
    expected = {"none", "symmetric", "asymmetric", "pairflip", "instance", "cifar10n", "cifar100n"}
    assert set(NOISE_KINDS) == expected
    assert set(NOISE_MODELS.names()) >= expected
    assert NOISE_MODELS.get("cifar10n").variants == ("aggre", "random1", "random2", "random3", "worse")


def test_new_model_registers_without_touching_a_dispatcher() -> None:
    @register_noise_model("test-shift", takes_rate=True)
    def _shift(spec: NoiseSpec, inputs: NoiseInputs) -> np.ndarray:
        return (inputs.labels + 1) % inputs.num_classes

    try:
        assert parse_noise_spec("test-shift:0.3") == NoiseSpec("test-shift", 0.3)
        res = apply_noise("test-shift:0.3", np.array([0, 1, 2]), 3, seed=0)
        np.testing.assert_array_equal(res.noisy_labels, [1, 2, 0])
    finally:
        NOISE_MODELS._items.pop("test-shift")  # keep the global registry clean for other tests


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "symetric:0.4",
            "unknown noise model 'symetric' in noise spec 'symetric:0.4' (did you mean 'symmetric'?)",
        ),
        ("gaussian:0.2", "unknown noise model 'gaussian' in noise spec 'gaussian:0.2'"),
        ("symmetric:1.2", "noise rate 1.2 in 'symmetric:1.2' is outside [0, 1)"),
        ("pairflip:1", "noise rate 1 in 'pairflip:1' is outside [0, 1)"),
        ("asymmetric:-0.1", "noise rate -0.1 in 'asymmetric:-0.1' is outside [0, 1)"),
        ("instance:nan", "noise rate nan in 'instance:nan' is outside [0, 1)"),
        ("symmetric:abc", "noise rate 'abc' in 'symmetric:abc' is not a number"),
        ("symmetric:40%", "noise rate '40%' in 'symmetric:40%' is not a number (write 40% as 0.4)"),
        ("symmetric", "noise spec 'symmetric' needs a rate, e.g. 'symmetric:0.4'"),
        ("pairflip:", "noise spec 'pairflip:' needs a rate, e.g. 'pairflip:0.4'"),
        ("cifar10n:bad", "unknown cifar10n variant 'bad'; choose one of aggre, random1, random2, random3, worse"),
        ("cifar10n:wrose", "unknown cifar10n variant 'wrose' (did you mean 'worse'?)"),
        ("cifar100n:aggre", "unknown cifar100n variant 'aggre'; choose one of noisy"),
        ("cifar10n", "noise spec 'cifar10n' needs a variant; choose one of aggre, random1"),
        ("none:0.3", "noise model 'none' takes no rate or variant, got 'none:0.3'"),
        ("", "empty noise spec"),
        (0.4, "noise spec must be a string such as 'symmetric:0.4' or 'none', got 0.4"),
    ],
)
def test_parse_noise_spec_errors(text: Any, message: str) -> None:
    with pytest.raises(KnnmixError, match=re.escape(message)):
        parse_noise_spec(text)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("symetric", 0.4, None), "unknown noise model 'symetric'"),
        (("symmetric", None, None), "noise spec 'symmetric' needs a rate"),
        (("symmetric", 1.5, None), "noise rate 1.5 in 'symmetric:1.5' is outside [0, 1)"),
        (("symmetric", True, None), "noise rate True in 'symmetric:True' is not a number"),
        (("symmetric", 0.2, "worse"), "takes a rate, not a variant; got 'worse'"),
        (("cifar10n", None, "bad"), "unknown cifar10n variant 'bad'"),
        (("cifar10n", 0.2, None), "takes a variant, not a rate; got 0.2"),
        (("none", 0.5, None), "noise model 'none' takes no rate or variant, got 'none:0.5'"),
    ],
)
def test_noise_spec_fields_are_validated(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(KnnmixError, match=re.escape(message)):
        NoiseSpec(*args)


# ------------------------------------------------------------------------------------- apply_noise errors
Y = balanced_labels(10, 20)  # N = 200


@pytest.mark.parametrize(
    ("spec", "labels", "num_classes", "kwargs", "message"),
    [
        ("symmetric:0.2", Y.reshape(20, 10), 10, {}, "labels must be a 1-D array (N,), got shape (20, 10)"),
        ("symmetric:0.2", Y.astype(np.float32), 10, {}, "labels must be an integer array, got dtype float32"),
        ("symmetric:0.2", np.array([], dtype=np.int64), 10, {}, "labels is empty"),
        ("symmetric:0.2", np.append(Y, 12), 10, {}, "labels must lie in [0, 10) for num_classes=10; found 12"),
        ("symmetric:0.2", np.append(Y, -1), 10, {}, "found -1"),
        ("symmetric:0.2", Y, 1, {}, "num_classes must be an integer >= 2, got 1"),
        ("symmetric:0.2", Y, True, {}, "num_classes must be an integer >= 2, got True"),
        ("symmetric:0.2", Y, 10.0, {}, "num_classes must be an integer >= 2, got 10.0"),
        ("symmetric:0.2", Y, 10, {"seed": -1}, "seed must be an integer >= 0, got -1"),
        ("symmetric:0.2", Y, 10, {"seed": 1.5}, "seed must be an integer >= 0, got 1.5"),
        ("symmetric:0.2", Y, 10, {"symmetric_convention": "all"}, "unknown symmetric_convention 'all'"),
        ("instance:0.2", Y, 10, {"instance_std": 0.0}, "instance_std must be a positive number, got 0.0"),
        ("instance:0.2", Y, 10, {"instance_std": float("nan")}, "instance_std must be a positive number, got nan"),
        ("instance:0.2", Y, 10, {}, "instance noise needs features"),
        ("instance:0.2", Y, 10, {"features": np.zeros((199, 4))}, "features has 199 rows but labels has 200"),
        ("instance:0.2", Y, 10, {"features": np.zeros(200)}, "features must be a 2-D array (N, D)"),
        ("instance:0.2", Y, 10, {"features": np.full((200, 3), np.nan)}, "contain nan or inf"),
        (
            "asymmetric:0.4",
            Y,
            10,
            {},
            "asymmetric noise has no class map for dataset family 'generic'; use symmetric, pairflip or instance",
        ),
        ("asymmetric:0.4", Y, 10, {"family": "cifar-10"}, "family 'cifar-10' (did you mean 'cifar10'?)"),
        ("asymmetric:0.4", Y, 10, {"family": "cifar100"}, "asymmetric noise on cifar100 needs coarse_labels"),
        ("asymmetric:0.4", Y, 100, {"family": "cifar10"}, "maps 10 classes, but num_classes is 100"),
        (
            "asymmetric:0.4",
            Y,
            100,
            {"family": "cifar100", "coarse_labels": np.zeros(10, dtype=np.int64)},
            "coarse_labels must have shape (200,) like labels, got (10,)",
        ),
        (
            "asymmetric:0.4",
            np.array([3, 3, 4]),
            100,
            {"family": "cifar100", "coarse_labels": np.array([1, 2, 1])},
            "fine class 3 appears with coarse labels [1, 2]",
        ),
        ("cifar10n:worse", Y, 10, {"family": "cifar100"}, "it needs dataset family 'cifar10', got 'cifar100'"),
        ("cifar10n:worse", Y, 10, {"family": "generic"}, "it needs dataset family 'cifar10', got 'generic'"),
        ("cifar100n:noisy", Y, 100, {"family": "cifar10"}, "needs dataset family 'cifar100', got 'cifar10'"),
        (
            "cifar10n:worse",
            Y,
            10,
            {"family": "cifar10"},
            "cifar10n labels cover CIFAR-10's 50,000 training images; this dataset has 200",
        ),
        (
            "cifar100n:noisy",
            balanced_labels(100, 3),
            100,
            {"family": "cifar100"},
            "cifar100n labels cover CIFAR-100's 50,000 training images; this dataset has 300",
        ),
        (
            "cifar10n:aggre",
            balanced_labels(10, 5000),
            10,
            {"family": "cifar10"},
            "noise spec 'cifar10n:aggre' needs cifar_n_dir, the folder holding CIFAR-10_human.pt",
        ),
        ("symmetric:2", Y, 10, {}, "noise rate 2 in 'symmetric:2' is outside [0, 1)"),
    ],
)
def test_apply_noise_errors(
    spec: str, labels: np.ndarray, num_classes: Any, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(KnnmixError, match=re.escape(message)):
        apply_noise(spec, labels, num_classes, **kwargs)


def test_cifar_n_missing_file_names_path_and_expected_file(tmp_path: Path) -> None:
    y = balanced_labels(10, 5000)
    (tmp_path / "given.pt").write_bytes(b"")  # the label file named in place of its folder
    with pytest.raises(KnnmixError, match=re.escape(f"cifar_n_dir {str(tmp_path / 'given.pt')!r} is a file; give the "
                                                    "folder that holds CIFAR-10_human.pt")):
        apply_noise("cifar10n:worse", y, 10, seed=0, family="cifar10", cifar_n_dir=tmp_path / "given.pt")
    expected = f"CIFAR-N label file {tmp_path / 'CIFAR-10_human.pt'} not found: noise spec 'cifar10n:worse' expects "
    with pytest.raises(KnnmixError, match=re.escape(expected + "CIFAR-10_human.pt in cifar_n_dir")):
        apply_noise("cifar10n:worse", y, 10, seed=0, family="cifar10", cifar_n_dir=str(tmp_path))


def test_cifar_n_unreadable_or_unsafe_file_is_a_clear_error(tmp_path: Path) -> None:
    import fractions

    import torch

    y = balanced_labels(10, 5000)
    path = tmp_path / "CIFAR-10_human.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(KnnmixError, match=re.escape(f"cannot read CIFAR-N label file {path}")):
        apply_noise("cifar10n:aggre", y, 10, seed=0, family="cifar10", cifar_n_dir=tmp_path)
    # a pickled object outside the numpy allow-list is refused (weights_only loading), never executed
    torch.save({"clean_label": fractions.Fraction(1, 3)}, path)
    with pytest.raises(KnnmixError, match=re.escape("with torch.load(weights_only=True)")):
        load_cifar_n_file(path)
    torch.save({"aggre_label": np.zeros(50_000, dtype=np.float32)}, path)  # intact, but not integer labels
    with pytest.raises(KnnmixError, match=re.escape("'aggre_label' of") + ".*not a 1-D integer label array"):
        load_cifar_n_file(path)
    torch.save({"clean_label": np.zeros(50_000, dtype=np.int64)}, path)  # a valid file without the variant
    with pytest.raises(KnnmixError, match=re.escape("has no 'aggre_label' entry")):
        apply_noise("cifar10n:aggre", np.zeros(50_000, dtype=np.int64), 10, seed=0, family="cifar10",
                    cifar_n_dir=tmp_path)  # fmt: skip


def test_cifar_n_dir_may_start_with_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'~' from a config file or --set (no shell expands it) was taken as a folder named '~': file not found."""
    import torch

    monkeypatch.setenv("HOME", str(tmp_path))
    clean = balanced_labels(10, 5000)
    (tmp_path / "cifar-n").mkdir()
    torch.save({"clean_label": clean, "worse_label": (clean + 1) % 10}, tmp_path / "cifar-n" / "CIFAR-10_human.pt")
    res = apply_noise("cifar10n:worse", clean, 10, seed=0, family="cifar10", cifar_n_dir="~/cifar-n")
    assert np.array_equal(res.noisy_labels, (clean + 1) % 10)


# ------------------------------------------------------------------------------------ real CIFAR-N labels
CIFAR_N_FILES = ("CIFAR-10_human.pt", "CIFAR-100_human.pt")


@pytest.fixture(scope="module")
def cifar_n_dir() -> Path:
    folder = Path(os.environ.get("KNNMIX_CIFAR_N_DIR", REPO_ROOT.parent / "shared" / "data" / "cifar-n"))
    missing = [name for name in CIFAR_N_FILES if not (folder / name).is_file()]
    if missing:
        reason = (f"CIFAR-N label files {', '.join(missing)} not found in {folder}; put CIFAR-10_human.pt and "
                  "CIFAR-100_human.pt (https://github.com/UCSC-REAL/cifar-10-100n) there or set KNNMIX_CIFAR_N_DIR")
        if os.environ.get("KNNMIX_REQUIRE_CIFAR_N"):  # .ci/run: CI must never skip them
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return folder


@pytest.fixture(scope="module")
def cifar_n_files(cifar_n_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    return {name: load_cifar_n_file(cifar_n_dir / name) for name in CIFAR_N_FILES}


@pytest.mark.parametrize(
    ("spec", "expected_percent"),
    [
        ("cifar10n:aggre", "9.01"),
        ("cifar10n:random1", "17.23"),
        ("cifar10n:random2", "18.12"),
        ("cifar10n:random3", "17.64"),
        ("cifar10n:worse", "40.21"),
        ("cifar100n:noisy", "40.20"),
    ],
)
def test_cifar_n_published_noise_rates(
    cifar_n_dir: Path, cifar_n_files: dict[str, dict[str, np.ndarray]], spec: str, expected_percent: str
) -> None:
    ten = spec.startswith("cifar10n")
    data = cifar_n_files["CIFAR-10_human.pt" if ten else "CIFAR-100_human.pt"]
    c, family = (10, "cifar10") if ten else (100, "cifar100")
    clean = data["clean_label"]
    assert clean.shape == (50_000,) and clean.dtype == np.int64
    res = apply_noise(spec, clean, c, seed=0, family=family, cifar_n_dir=cifar_n_dir)
    assert f"{100 * res.noise_rate:.2f}" == expected_percent
    np.testing.assert_allclose(res.transition.sum(axis=1), 1.0, atol=1e-12)
    assert res.spec == spec
    other_seed = apply_noise(spec, clean, c, seed=1, family=family, cifar_n_dir=str(cifar_n_dir))
    np.testing.assert_array_equal(res.noisy_labels, other_seed.noisy_labels)  # real labels ignore the seed


def test_cifar_n_rejects_labels_in_another_order(
    cifar_n_dir: Path, cifar_n_files: dict[str, dict[str, np.ndarray]]
) -> None:
    clean = cifar_n_files["CIFAR-10_human.pt"]["clean_label"]
    shuffled = np.random.default_rng(0).permutation(clean)
    mismatches = int(np.count_nonzero(shuffled != clean))
    with pytest.raises(KnnmixError, match=re.escape(f"labels differ from clean_label of {cifar_n_dir}")) as err:
        apply_noise("cifar10n:worse", shuffled, 10, seed=0, family="cifar10", cifar_n_dir=cifar_n_dir)
    assert f"at {mismatches:,} of 50,000 positions" in str(err.value)


@pytest.mark.parametrize(("dataset", "spec", "published", "learns"), [
    ("cifar10", "cifar10n:worse", "40.21", (50, 60)),  # test accuracy, noisy-label precision and recall (%) above
    ("cifar100", "cifar100n:noisy", "40.20", None),  # 100 colours, 9 training images of each: not learned in 3 epochs
])
def test_train_runs_on_cifar_with_the_real_cifar_n_labels(
    cifar_n_dir: Path, cifar_n_files: dict[str, dict[str, np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture,
    dataset: str, spec: str, published: str, learns: tuple[float, float] | None,
) -> None:
    """``knnmix train --dataset cifar10 --noise cifar10n:worse`` (and CIFAR-100N) end to end, as a user runs it: the
    release's file layout (written here: 50,000 training images in CIFAR's order, labelled with the label file's
    ``clean_label``, 8x8 pixels to stay small; each class a colour), the real CIFAR-N file. The run trains on
    exactly the human labels of its rows, reports the published rate and keeps the true labels beside them."""
    import pickle

    from knnmix.cli import main as cli_main

    ten = dataset == "cifar10"
    data = cifar_n_files["CIFAR-10_human.pt" if ten else "CIFAR-100_human.pt"]
    clean, noisy = data["clean_label"], data["worse_label" if ten else "noisy_label"]
    classes = 10 if ten else 100
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (classes, 3, 1, 1))
    folder = tmp_path / "data" / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True)

    def dump(name: str, labels: np.ndarray, coarse: np.ndarray | None = None) -> None:
        pixels = np.clip(colours[labels] + rng.integers(-40, 41, (len(labels), 3, 8, 8)), 0, 255).astype(np.uint8)
        obj = {"batch_label": name, "labels" if ten else "fine_labels": labels.tolist(),
               "data": pixels.reshape(len(labels), -1), **({} if ten else {"coarse_labels": coarse.tolist()})}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=4))

    test_labels = rng.integers(0, classes, 500)
    if ten:
        for i in range(5):
            dump(f"data_batch_{i + 1}", clean[10_000 * i: 10_000 * (i + 1)])
        dump("test_batch", test_labels)
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{k}" for k in range(10)]}))
    else:
        dump("train", clean, data["clean_coarse_label"])
        dump("test", test_labels, test_labels // 5)
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{k}" for k in range(100)]}))
    out = tmp_path / "run"
    code = cli_main(["train", "--dataset", dataset, "--noise", spec, "--method", "knnmix", "--epochs", "3",
                     "--out", str(out), "--set", f"data.root={tmp_path / 'data'}", "--set",
                     f"noise.cifar_n_dir={cifar_n_dir}", "--set", "model.name=small_cnn", "--set",
                     "data.train_subset=1000", "--set", "method.warmup_epochs=1", "--set", "method.correction_start=2"])
    assert code == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["dataset"], summary["noise"], summary["model"]) == (dataset, spec, "small_cnn")
    assert f"{100 * summary['noise_rate']:.2f}" == published  # the published rate, over all 50,000 images
    saved = np.load(out / "noisy_labels.npz")
    np.testing.assert_array_equal(saved["noisy_labels"], noisy)  # the annotators' labels, in CIFAR's order
    np.testing.assert_array_equal(saved["true_labels"], clean)
    rows = saved["train_rows"]
    assert len(rows) + len(saved["val_rows"]) == 1000
    assert summary["train_noise_rate"] == pytest.approx(float(np.mean(noisy[rows] != clean[rows])))
    if learns is not None:  # each class a colour: learned through 40% human noise, and the noise found
        final = summary["final"]
        assert final["test_acc"] > learns[0] and min(final["noisy_precision"], final["noisy_recall"]) > learns[1]


def test_asymmetric_cifar100_on_real_superclasses(cifar_n_files: dict[str, dict[str, np.ndarray]]) -> None:
    data = cifar_n_files["CIFAR-100_human.pt"]
    fine, coarse = data["clean_label"], data["clean_coarse_label"]
    res = apply_noise("asymmetric:0.2", fine, 100, seed=0, family="cifar100", coarse_labels=coarse)
    assert res.noise_rate == pytest.approx(0.2, abs=1e-12)  # every class is a source, 500 images each
    # aquatic mammals (beaver 4, dolphin 30, otter 55, seal 72, whale 95): 4 -> 30 -> 55 -> 72 -> 95 -> 4
    for src, dst in [(4, 30), (30, 55), (55, 72), (72, 95), (95, 4)]:
        assert res.transition[src, dst] == pytest.approx(0.2)
    fine_to_coarse = np.zeros(100, dtype=np.int64)
    fine_to_coarse[fine] = coarse
    np.testing.assert_array_equal(fine_to_coarse[res.noisy_labels], coarse)


@pytest.mark.parametrize(("spec", "n", "flips"), [("symmetric:0.29", 50, 15), ("pairflip:0.35", 90, 32)])
def test_a_half_count_rounds_up_though_the_float_product_falls_below_it(spec, n, flips):
    """0.29 * 50 is 14.499999999999998 in floats: symmetric:0.29 flipped 14 of 50 labels, not round(14.5) = 15 as
    documented (halves rounded up); pairflip:0.35 on one class of 90 flipped 31, not 32."""
    res = apply_noise(spec, np.zeros(n, dtype=np.int64), 10, seed=0)
    assert int(res.is_noisy.sum()) == flips
