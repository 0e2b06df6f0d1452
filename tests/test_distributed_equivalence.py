"""Two torch.distributed (gloo) workers compute exactly what one process computes from the same features and losses.

Each worker holds an uneven, shuffled shard of a synthetic bank; after the gather, the neighbour indices, clean
probabilities and soft-target updates must equal the single-process results bit for bit.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from knnmix.methods import dist as D
from knnmix.methods import phases
from knnmix.methods.state import SampleState
from knnmix.math import FaissSearch, TorchSearch, l2_normalise, soft_cross_entropy

N, DIM, C, K = 301, 16, 5, 3  # odd N: the two shards differ in size


def synthetic_bank_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (N,), generator=g)
    centres = torch.randn(C, DIM, generator=g) * 3
    feats = l2_normalise(centres[labels] + torch.randn(N, DIM, generator=g))
    logits = torch.randn(N, C, generator=g) * 2
    logits[torch.arange(N), labels] += 3 * (torch.rand(N, generator=g) > 0.3)  # a clean and a noisy mode
    return labels, feats, torch.log_softmax(logits, dim=1)


def run_phases(labels, index, feats, log_probs, dist: D.Dist, backend: str):
    state = SampleState.initial(labels, C, K)
    searcher = FaissSearch(threads=1) if backend == "faiss" else TorchSearch()
    for epoch in (1, 2):  # two epochs: the second sees corrected targets and a loss window of 2
        bank = phases.gather_bank(index, feats, log_probs, dist)
        found = phases.bank_neighbours(bank, max(3, K), searcher, dist)  # sharded search, gathered
        vote = phases.neighbour_vote(state, bank, found[:, :3])  # the neighbour gate's vote
        phases.correct_targets(state, bank, 0.7, "clean_prob+neighbours", vote)
        phases.fit_mixture(state, bank, window=2, max_iter=10, tol=1e-2, reg_covar=5e-4, seed=epoch, dist=dist)
        state.neighbours[bank.index] = bank.index[found[:, :K]]
    return state


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    """Rank ``rank`` of two: every scenario of this file in turn, each writing what this rank computed."""
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                          timeout=timedelta(seconds=120))  # a collective one rank misses fails, never hangs the suite
    try:
        torch.set_num_threads(1)
        dist = D.current()
        assert dist.world_size == 2
        labels, feats, log_probs = synthetic_bank_inputs()
        mine = D.shard(torch.arange(N), dist)
        mine = mine[torch.randperm(mine.numel(), generator=torch.Generator().manual_seed(rank))]  # any order
        for backend in ("faiss", "torch"):
            state = run_phases(labels, mine, feats[mine], log_probs[mine], dist, backend)
            torch.save(state.state_dict(), os.path.join(out_dir, f"rank{rank}-{backend}.pt"))
        rows = D.all_gather_rows(torch.arange(3 if rank == 0 else 5) * 10 + rank)  # uneven: padded, then dropped
        torch.save(rows, os.path.join(out_dir, f"gathered{rank}.pt"))
        x, y, keep = guarded_batch()
        part = slice(4 * rank, 4 * rank + 4)
        grads = [guarded_grad(x[part], y[part], keep[part], dist, own) for own in (False, True)]
        torch.save(grads, os.path.join(out_dir, f"guard{rank}.pt"))
    finally:
        td.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The folder of what two gloo ranks computed in every scenario: one spawn for all of them (each spawn starts
    two Python processes that import torch and knnmix, ~5 CPU-seconds)."""
    out = tmp_path_factory.mktemp("two-ranks")
    mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_two_workers_match_one_process_exactly(two_ranks, backend):
    labels, feats, log_probs = synthetic_bank_inputs()
    single = run_phases(labels, torch.arange(N), feats, log_probs, D.Dist(), backend).state_dict()
    for rank in (0, 1):
        got = torch.load(two_ranks / f"rank{rank}-{backend}.pt")
        assert torch.equal(got["neighbours"], single["neighbours"]), f"rank {rank}: neighbour indices differ"
        assert torch.equal(got["clean_prob"], single["clean_prob"]), f"rank {rank}: clean probabilities differ"
        assert torch.equal(got["targets"], single["targets"]), f"rank {rank}: soft targets differ"
        assert torch.equal(got["loss_history"], single["loss_history"]), f"rank {rank}: loss history differs"
    # the test can fail: the phases really changed the state
    assert (single["neighbours"] >= 0).all()
    assert single["clean_prob"].min() < 0.5 < single["clean_prob"].max()


def test_uneven_gather_drops_padding_and_keeps_rank_order(two_ranks):
    for rank in (0, 1):
        got = torch.load(two_ranks / f"gathered{rank}.pt")
        assert torch.equal(got, torch.cat([torch.arange(3) * 10, torch.arange(5) * 10 + 1])), rank


def guarded_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 4, generator=g), torch.softmax(torch.randn(8, 3, generator=g), dim=1)
    keep = torch.tensor([0.9, 0.8, 0.95, 0.7, 0.02, 0.05, 0.01, 0.03])  # rank 0 clean-looking, rank 1 noisy-looking
    return x, y, keep


def guarded_grad(x, y, keep, dist: D.Dist, own_total: bool = False) -> torch.Tensor:
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(12.0).reshape(3, 4) / 10)
        layer.bias.zero_()
    total = None if own_total else D.mean_weight_total(keep, dist)
    soft_cross_entropy(layer(x), y, keep, weight_total=total).backward()
    return D.all_reduce_sum(layer.weight.grad, dist) / dist.world_size  # DDP averages the ranks' gradients


def test_a_guarded_loss_on_two_ranks_has_the_gradient_of_one_process(two_ranks):
    """method.guard weights each synthetic sample's loss; the weighted mean was each rank's own, so a rank whose
    samples all looked noisy counted as much as one whose samples looked clean (not so in one process)."""
    x, y, keep = guarded_batch()
    single = guarded_grad(x, y, keep, D.Dist())
    for rank in (0, 1):
        global_mean, own_mean = torch.load(two_ranks / f"guard{rank}.pt")
        torch.testing.assert_close(global_mean, single)
        assert not torch.allclose(own_mean, single, atol=1e-3)  # each rank's own weighted mean: another gradient
