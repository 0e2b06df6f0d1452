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
    is_correction_epoch,
    l2_normalise,
    mix_batch,
    mixup,
    neighbour_weights,
    neighbours_excluding_self,
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
