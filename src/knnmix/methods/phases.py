"""The named phases of an epoch that act on the gathered feature bank and the per-sample state.

Each function takes the gathered :class:`Bank`, updates :class:`~knnmix.methods.state.SampleState` in place, and
gives the same result on every rank as a single process would compute from the same features and losses: the bank
is sorted by dataset index after gathering, the mixture is fitted on rank 0 and broadcast, each rank searches
neighbours for its own shard and the neighbour rows are gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from knnmix.methods import dist as D
from knnmix.methods.state import SampleState
from knnmix.math import NeighbourSearch, fit_clean_probability, fit_clean_probability_per_class
from knnmix.math import neighbour_agreement, neighbours_excluding_self, normalise_losses, update_soft_targets
from knnmix.math import window_mean


VOTING_GATES = ("neighbours", "clean_prob+neighbours")  # the correction gates that need the neighbour vote
CORRECTION_GATES = ("none", "clean_prob", *VOTING_GATES)  # (method.correction_gate)


@dataclass
class Bank:
    """One no-augmentation pass over the (active) training set, gathered from all ranks, sorted by index.

    ``index`` ``(M,)`` are dataset indices, ascending; ``features`` ``(M, D)`` are L2-normalised penultimate
    features; ``log_probs`` ``(M, C)`` are the network's log-softmax outputs.
    """

    index: Tensor
    features: Tensor
    log_probs: Tensor

    def __len__(self) -> int:
        return self.index.numel()


def gather_bank(index: Tensor, features: Tensor, log_probs: Tensor, dist: D.Dist) -> Bank:
    """Gather every rank's shard ``(n_r, ...)`` (uneven, no padding) into one bank sorted by dataset index."""
    all_index = D.all_gather_rows(index.long(), dist)
    order = torch.argsort(all_index)
    if torch.unique(all_index).numel() != all_index.numel():
        raise RuntimeError("gathered bank holds a sample twice: the eval shards overlap")
    return Bank(
        index=all_index[order],
        features=D.all_gather_rows(features.float(), dist)[order],
        log_probs=D.all_gather_rows(log_probs.float(), dist)[order],
    )


def correct_targets(state: SampleState, bank: Bank, momentum: float, gate: str = "none",
                    vote: Tensor | None = None) -> None:
    """Soft-target correction ``t_i <- m t_i + (1 - m) softmax(f(x_i))`` for every sample in the bank. ``gate`` scales
    each step: ``clean_prob`` by ``1 - clean_prob_i`` (the last mixture fit's: a sample held clean keeps its label),
    ``neighbours`` by ``vote`` ``(M,)`` (:func:`neighbour_vote`: the share of its neighbours that agree with the
    prediction), ``clean_prob+neighbours`` by both; ``none`` leaves every step whole."""
    if gate not in CORRECTION_GATES:  # (it took the whole step)
        raise ValueError(f"unknown correction gate {gate!r}; choose one of {', '.join(CORRECTION_GATES)}")
    clean = state.clean_prob[bank.index]
    keep = clean if gate == "clean_prob" else None
    if gate in VOTING_GATES:
        if vote is None:
            raise ValueError(f"correction gate {gate!r} needs the neighbour vote")
        keep = 1.0 - vote if gate == "neighbours" else 1.0 - (1.0 - clean) * vote
    state.targets[bank.index] = update_soft_targets(state.targets[bank.index], bank.log_probs.exp(), momentum, keep)


def neighbour_vote(state: SampleState, bank: Bank, found: Tensor) -> Tensor:
    """``(M,)`` for the bank's samples: the share of each one's neighbours ``found`` ``(M, k)`` (bank positions, from
    :func:`bank_neighbours`) whose current label (``argmax t``) is the class the network predicts for it."""
    labels = state.corrected_labels()[bank.index]
    return neighbour_agreement(bank.log_probs.argmax(1), labels[found])


def fit_mixture(
    state: SampleState, bank: Bank, *, window: int, per_class: bool = False, min_class: int = 20, max_iter: int,
    tol: float, reg_covar: float, seed: int, dist: D.Dist,
) -> None:
    """Clean probabilities from the losses against the current corrected labels (``argmax t``).

    Losses are min-max normalised over the bank, appended to the loss history (samples outside the bank: NaN),
    averaged over the last ``window`` epochs and fitted by a two-component GMM on rank 0 (one per current class with
    ``per_class``); the result is broadcast so that every rank holds identical probabilities.
    """
    n = state.num_samples
    labels = state.corrected_labels()[bank.index]
    losses = -bank.log_probs.gather(1, labels[:, None]).squeeze(1)
    full = torch.full((n,), float("nan"))
    full[bank.index] = normalise_losses(losses)
    state.loss_history = torch.cat([state.loss_history, full[None]])[-window:]  # the last ``window`` epochs
    clean = torch.empty(n)
    if dist.is_main:
        averaged = window_mean(state.loss_history, window)
        gmm = {"max_iter": max_iter, "tol": tol, "reg_covar": reg_covar, "seed": seed}
        if per_class:
            clean = fit_clean_probability_per_class(averaged, state.corrected_labels(), state.targets.shape[1],
                                                    min_class=min_class, **gmm)
        else:
            clean = fit_clean_probability(averaged, **gmm)
    clean = D.broadcast(clean, 0, dist)
    fitted = ~torch.isnan(clean)
    state.clean_prob[fitted] = clean[fitted]


def bank_neighbours(bank: Bank, k: int, searcher: NeighbourSearch, dist: D.Dist) -> Tensor:
    """Top-``k`` cosine neighbours ``(M, k)`` (bank positions, self excluded) of every bank sample, over the whole bank.

    Each rank searches the queries of its own strided shard of the bank; the rows are gathered so that every rank
    ends with the full table.
    """
    searcher.build(bank.features)
    positions = D.shard(torch.arange(len(bank)), dist)
    found = torch.empty(len(bank), k, dtype=torch.long)
    found[D.all_gather_rows(positions, dist)] = D.all_gather_rows(
        neighbours_excluding_self(searcher, bank.features, positions, k), dist)
    return found
