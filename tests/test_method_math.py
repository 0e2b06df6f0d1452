"""Seeded unit tests of the pure tensor functions in knnmix.math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from knnmix.math import (
    FaissSearch,
    TorchSearch,
    fit_clean_probability,
    fit_clean_probability_per_class,
    guard_weights,
    is_correction_epoch,
    l2_normalise,
    mix_batch,
    mixup,
    negative_entropy,
    neighbour_agreement,
    neighbour_weights,
    neighbours_excluding_self,
    neighbours_within_batch,
    normalise_losses,
    one_hot_targets,
    soft_cross_entropy,
    update_soft_targets,
    window_mean,
)

# ---------------------------------------------------------------------------------------------------------------
# clean probability


def test_normalise_losses_maps_to_unit_interval_and_keeps_nan():
    x = torch.tensor([2.0, 4.0, float("nan"), 3.0])
    y = normalise_losses(x)
    assert torch.allclose(y[[0, 1, 3]], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.isnan(y[2])


def test_normalise_constant_losses_gives_zeros():
    assert torch.equal(normalise_losses(torch.full((5,), 3.0)), torch.zeros(5))


@pytest.mark.parametrize("bad", [torch.ones(2, 2), torch.tensor([1.0, float("inf")]), torch.tensor([1, 2])])
def test_normalise_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        normalise_losses(bad)


def test_gmm_separates_a_clearly_bimodal_loss_vector():
    g = torch.Generator().manual_seed(0)
    clean = 0.1 + 0.03 * torch.randn(300, generator=g)
    noisy = 0.8 + 0.05 * torch.randn(100, generator=g)
    losses = normalise_losses(torch.cat([clean, noisy]))
    p = fit_clean_probability(losses, seed=0)
    assert p.shape == (400,)
    assert ((p >= 0) & (p <= 1)).all()
    assert (p[:300] > 0.99).float().mean() > 0.98
    assert (p[300:] < 0.01).float().mean() > 0.98


def test_gmm_is_deterministic_given_seed_and_skips_nan():
    g = torch.Generator().manual_seed(1)
    losses = torch.cat([torch.rand(50, generator=g) * 0.3, 0.7 + torch.rand(50, generator=g) * 0.3])
    losses[5] = float("nan")
    a = fit_clean_probability(losses, seed=3)
    b = fit_clean_probability(losses, seed=3)
    assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))
    assert torch.isnan(a[5]) and not torch.isnan(a[4])


def test_gmm_degenerate_input_means_no_evidence_of_noise():
    assert torch.equal(fit_clean_probability(torch.zeros(10)), torch.ones(10))
    assert torch.equal(fit_clean_probability(torch.tensor([0.3])), torch.ones(1))


def test_window_mean_averages_last_epochs_ignoring_nan():
    h = torch.tensor([[1.0, 1.0], [0.0, float("nan")], [0.5, 0.2]])
    assert torch.allclose(window_mean(h, 2), torch.tensor([0.25, 0.2]))
    assert torch.allclose(window_mean(h, 1), torch.tensor([0.5, 0.2]))
    with pytest.raises(ValueError):
        window_mean(h, 0)


# ---------------------------------------------------------------------------------------------------------------
# neighbours


def _bank(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return l2_normalise(torch.randn(n, d, generator=g))


def test_l2_normalise_gives_unit_rows():
    x = l2_normalise(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(x[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(x[1], torch.zeros(2))


@pytest.mark.parametrize("backend", [FaissSearch, TorchSearch])
def test_neighbours_exclude_self_and_match_brute_force(backend):
    bank = _bank()
    s = backend()
    s.build(bank)
    q = torch.arange(64)
    nbr = neighbours_excluding_self(s, bank, q, 5)
    assert nbr.shape == (64, 5)
    assert not (nbr == q[:, None]).any()
    sims = bank @ bank.T
    sims.fill_diagonal_(-math.inf)
    expected = sims.topk(5, dim=1).indices
    assert torch.equal(nbr, expected)


def test_faiss_and_torch_backends_agree():
    bank = _bank(200, 16, seed=2)
    out = []
    for backend in (FaissSearch(threads=1), TorchSearch(chunk=37)):
        backend.build(bank)
        out.append(neighbours_excluding_self(backend, bank, torch.arange(0, 200, 3), 4))
    assert torch.equal(out[0], out[1])


def test_self_is_dropped_even_when_an_exact_duplicate_ranks_first():
    bank = _bank(10, 4)
    bank[3] = bank[7]  # 7 and 3 are identical: either may come first for query 7
    s = TorchSearch()
    s.build(bank)
    nbr = neighbours_excluding_self(s, bank, torch.tensor([7, 3]), 2)
    assert 7 not in nbr[0].tolist() and 3 in nbr[0].tolist()
    assert 3 not in nbr[1].tolist() and 7 in nbr[1].tolist()


def test_k_must_be_smaller_than_the_bank():
    bank = _bank(4, 3)
    s = TorchSearch()
    s.build(bank)
    with pytest.raises(ValueError, match="k=4"):
        neighbours_excluding_self(s, bank, torch.arange(4), 4)


# ---------------------------------------------------------------------------------------------------------------
# mixing weights, synthetic batch


def test_weights_are_a_distribution_per_row():
    w = torch.tensor([0.9, 0.1, 0.5, 0.0, 1.0])
    members = torch.tensor([[0, 1, 2], [3, 4, 0]])
    lam = neighbour_weights(w, members, 0.7)
    assert lam.shape == (2, 3)
    assert torch.allclose(lam.sum(1), torch.ones(2))
    assert (lam >= 0).all()


def test_temperature_one_with_one_neighbour_is_the_authors_rule():
    w = torch.tensor([0.8, 0.2, 0.6, 0.3])
    members = torch.tensor([[0, 1], [2, 3], [1, 0]])
    lam = neighbour_weights(w, members, 1.0)
    wi, wj = w[members[:, 0]], w[members[:, 1]]
    assert torch.allclose(lam[:, 0], wi / (wi + wj), atol=1e-6)


def test_temperature_to_zero_picks_the_cleanest_member():
    w = torch.tensor([0.3, 0.9, 0.6, 0.2])
    members = torch.tensor([[0, 1, 2], [3, 2, 0]])
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(neighbour_weights(w, members, 0.0), expected)
    assert torch.allclose(neighbour_weights(w, members, 1e-3), expected, atol=1e-6)
    # log(w)/T of every member overflowing to -inf gave NaN weights (T = 2e-38 is still a normal float32)
    assert torch.equal(neighbour_weights(torch.tensor([1e-3, 1e-4]), torch.tensor([[1, 0]]), 2e-38),
                       torch.tensor([[0.0, 1.0]]))
    # a T that float32 rounds to 0 (the config takes any T > 0) gave 0/0: NaN weights, a "diverged" run
    for tiny in (1e-300, 5e-324):
        lam = neighbour_weights(w, members, tiny)
        assert lam.dtype == torch.float32 and torch.equal(lam, expected), tiny


def test_members_all_about_zero_get_equal_weights():
    """ε on every member (documented): where the authors' rule keeps the anchor, knnmix mixes evenly."""
    lam = neighbour_weights(torch.tensor([0.0, 0.0, 1e-12]), torch.tensor([[0, 1, 2]]), 1.0)
    assert torch.allclose(lam, torch.full((1, 3), 1 / 3), atol=5e-3)


def test_high_temperature_flattens_weights():
    w = torch.tensor([0.9, 0.1])
    lam = neighbour_weights(w, torch.tensor([[0, 1]]), 1e4)
    assert torch.allclose(lam, torch.full((1, 2), 0.5), atol=1e-3)


def test_weights_reject_bad_input():
    with pytest.raises(ValueError):
        neighbour_weights(torch.tensor([0.5, 1.5]), torch.tensor([[0, 1]]), 1.0)
    with pytest.raises(ValueError):
        neighbour_weights(torch.tensor([0.5, 0.5]), torch.tensor([[0, 1]]), -1.0)


def test_mix_batch_weights_images_and_targets_alike():
    images = torch.stack([torch.zeros(2, 3, 3), torch.ones(2, 3, 3)], dim=1)  # (B=2, M=2, ...)
    images[1, 1] = 3.0
    targets = one_hot_targets(torch.tensor([0, 1, 2, 0]), 3).view(2, 2, 3)
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    x, y = mix_batch(images, targets, weights)
    assert x.shape == (2, 3, 3)
    assert torch.allclose(x[0], torch.full((3, 3), 0.75))
    assert torch.allclose(x[1], torch.full((3, 3), 1.5))
    assert torch.allclose(y, torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.0, 0.5]]))
    assert torch.allclose(y.sum(1), torch.ones(2))


def test_mix_batch_checks_shapes():
    with pytest.raises(ValueError):
        mix_batch(torch.zeros(2, 3, 4), torch.zeros(2, 2, 5), torch.zeros(2, 2))


def test_mixup_is_a_convex_combination():
    x = torch.arange(4.0).view(4, 1)
    t = one_hot_targets(torch.tensor([0, 1, 0, 1]), 2)
    perm = torch.tensor([1, 0, 3, 2])
    xm, tm = mixup(x, t, 0.7, perm)
    assert torch.allclose(xm.squeeze(), torch.tensor([0.3, 0.7, 2.3, 2.7]))
    assert torch.allclose(tm.sum(1), torch.ones(4))


def test_soft_cross_entropy_equals_hard_ce_on_one_hot_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(soft_cross_entropy(logits, one_hot_targets(y, 4)), expected)


# ---------------------------------------------------------------------------------------------------------------
# soft targets


def test_soft_target_update_is_the_moving_average():
    t = one_hot_targets(torch.tensor([0, 1]), 2)
    p = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    new = update_soft_targets(t, p, 0.9)
    assert torch.allclose(new, torch.tensor([[0.92, 0.08], [0.06, 0.94]]))
    assert torch.allclose(new.sum(1), torch.ones(2))
    assert torch.equal(t, one_hot_targets(torch.tensor([0, 1]), 2)), "input must not be modified"


def test_a_kept_share_withholds_that_share_of_each_step():
    t = one_hot_targets(torch.tensor([0, 0, 0]), 2)
    p = torch.tensor([[0.0, 1.0]] * 3)
    new = update_soft_targets(t, p, 0.8, keep=torch.tensor([1.0, 0.5, 0.0]))
    assert torch.allclose(new, torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2]]))  # kept, half a step, a full step
    assert torch.equal(update_soft_targets(t, p, 0.8, keep=torch.zeros(3)), update_soft_targets(t, p, 0.8))
    for bad in (torch.ones(2), torch.tensor([0.5, 1.5, 0.0]), torch.tensor([0.5, float("nan"), 0.0])):
        with pytest.raises(ValueError, match="keep must be"):
            update_soft_targets(t, p, 0.8, keep=bad)


def test_repeated_updates_converge_to_a_stable_prediction():
    t = one_hot_targets(torch.tensor([0]), 2)
    p = torch.tensor([[0.1, 0.9]])
    for _ in range(200):
        t = update_soft_targets(t, p, 0.9)
    assert torch.allclose(t, p, atol=1e-6)


@pytest.mark.parametrize(
    "epoch,start,period,expected",
    [(59, 60, 10, False), (60, 60, 10, True), (65, 60, 10, False), (70, 60, 10, True), (61, 60, 1, True)],
)
def test_correction_schedule(epoch, start, period, expected):
    assert is_correction_epoch(epoch, start, period) is expected


def test_one_hot_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        one_hot_targets(torch.tensor([0, 3]), 3)


def test_gmm_probabilities_follow_noise_in_a_mixed_sample():
    """Clean probability must be lower for high-loss samples: monotone along the loss axis."""
    rng = np.random.default_rng(0)
    losses = torch.from_numpy(np.concatenate([rng.uniform(0, 0.3, 80), rng.uniform(0.6, 1.0, 20)])).float()
    p = fit_clean_probability(losses, seed=0)
    order = torch.argsort(losses)
    assert (p[order][1:] <= p[order][:-1] + 1e-6).all()


# ------------------------------------------------------------------------------------- the knobs' math


def test_per_class_mixture_sees_flips_a_global_one_misses():
    """Class 0's clean losses sit near 0 and its flipped samples near 0.2; class 1's clean losses are high (a
    hard class) near 0.6. A global mixture splits class 1 from class 0 and calls the flips clean; one mixture
    per class finds them."""
    g = torch.Generator().manual_seed(0)
    clean0 = 0.02 * torch.rand(400, generator=g)
    flipped0 = 0.2 + 0.02 * torch.rand(100, generator=g)
    class1 = 0.6 + 0.05 * torch.rand(500, generator=g)
    losses = torch.cat([clean0, flipped0, class1])
    labels = torch.cat([torch.zeros(500, dtype=torch.long), torch.ones(500, dtype=torch.long)])
    flips = torch.zeros(1000, dtype=torch.bool)
    flips[400:500] = True
    global_fit = fit_clean_probability(losses, seed=0)
    per_class = fit_clean_probability_per_class(losses, labels, 2, min_class=20, seed=0)
    assert (global_fit[flips] > 0.5).float().mean() > 0.9  # missed
    assert (per_class[flips] < 0.5).float().mean() > 0.9  # found
    assert (per_class[:400] > 0.5).float().mean() > 0.9


def test_per_class_mixture_falls_back_to_the_global_fit_for_small_classes_and_keeps_nan():
    losses = torch.tensor([0.0, 0.1, 0.9, 1.0, 0.05, 0.95, float("nan")])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    per_class = fit_clean_probability_per_class(losses, labels, 2, min_class=4, seed=0)
    assert torch.isnan(per_class[-1])
    assert torch.allclose(per_class[4:6], fit_clean_probability(losses, seed=0)[4:6])  # class 1 has 2 < 4 losses
    with pytest.raises(ValueError, match="labels"):
        fit_clean_probability_per_class(losses, labels[:3], 2)


def test_guard_weights_scale_or_drop_by_the_cleanest_member():
    w = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.6, 0.0]])
    assert torch.equal(guard_weights(w, "none"), torch.ones(3))
    assert torch.allclose(guard_weights(w, "scale"), torch.tensor([0.9, 0.3, 0.6]))
    assert torch.equal(guard_weights(w, "drop"), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="guard"):
        guard_weights(w, "clip")


def test_weighted_soft_cross_entropy_is_the_weighted_mean():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(2)), dim=1)
    per = -(targets * torch.log_softmax(logits, 1)).sum(1)
    w = torch.tensor([1.0, 0.0, 0.5, 0.5])
    assert torch.allclose(soft_cross_entropy(logits, targets, w), (w * per).sum() / w.sum())
    assert soft_cross_entropy(logits, targets, torch.zeros(4)) == 0  # everything dropped: no gradient, no NaN
    with pytest.raises(ValueError, match="weights"):
        soft_cross_entropy(logits, targets, -w)
    with pytest.raises(ValueError, match="weights"):  # was a NaN loss, reported as a diverged run
        soft_cross_entropy(logits, targets, torch.tensor([float("nan"), 1.0, 1.0, 1.0]))
    total = torch.tensor(4.0)  # another divisor (data parallelism: the global batch's)
    assert torch.allclose(soft_cross_entropy(logits, targets, w, weight_total=total), (w * per).sum() / 4)
    with pytest.raises(ValueError, match=r"an empty batch \(B = 0\)"):  # was NaN: the mean of nothing
        soft_cross_entropy(logits[:0], targets[:0])


def test_negative_entropy_penalises_confident_predictions():
    flat, sharp = torch.zeros(2, 4), torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0]])
    assert negative_entropy(flat) == pytest.approx(-math.log(4), abs=1e-6)  # its minimum: uniform predictions
    assert negative_entropy(sharp) > -0.01


def test_neighbours_within_a_batch_are_its_other_most_similar_rows():
    f = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert neighbours_within_batch(f, 1).tolist() == [[1], [0], [3], [2]]
    two = neighbours_within_batch(f, 2)
    assert (two != torch.arange(4)[:, None]).all()  # never itself
    assert neighbours_within_batch(f[:1], 2).tolist() == [[0, 0]]  # a batch of one mixes with itself
    assert neighbours_within_batch(f[:2], 3).shape == (2, 3)  # fewer others than K: the best ones repeat


def test_the_pure_functions_check_their_scalar_arguments():
    """The math checks its own inputs; the config's range checks do not stand in for them (principle 1)."""
    t = torch.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        update_soft_targets(t, t, 1.5)
    with pytest.raises(ValueError, match="period"):
        is_correction_epoch(5, 1, 0)
    with pytest.raises(ValueError, match="min_class"):
        fit_clean_probability_per_class(torch.rand(6), torch.zeros(6, dtype=torch.long), 2, min_class=1)


def test_neighbour_agreement_is_the_share_of_neighbours_labelled_as_predicted():
    predicted = torch.tensor([0, 1, 2])
    labels = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0], [2, 2, 2, 2]])
    assert torch.equal(neighbour_agreement(predicted, labels), torch.tensor([0.5, 0.0, 1.0]))
    with pytest.raises(ValueError, match="neighbour_labels"):
        neighbour_agreement(predicted, labels[:2])
