"""Two torch.distributed (gloo) workers compute exactly what one process computes from the same features and losses.

Each worker holds an uneven, shuffled shard of a synthetic bank; after the gather, the neighbour indices, clean
probabilities and soft-target updates must equal the single-process results bit for bit.
"""

from __future__ import annotations

import os

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


def _worker(rank: int, world: int, init_file: str, out_dir: str, backend: str) -> None:
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        dist = D.current()
        assert dist.world_size == world
        labels, feats, log_probs = synthetic_bank_inputs()
        mine = D.shard(torch.arange(N), dist)
        mine = mine[torch.randperm(mine.numel(), generator=torch.Generator().manual_seed(rank))]  # any order
        state = run_phases(labels, mine, feats[mine], log_probs[mine], dist, backend)
        torch.save(state.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        td.destroy_process_group()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_two_workers_match_one_process_exactly(tmp_path, backend):
    labels, feats, log_probs = synthetic_bank_inputs()
    single = run_phases(labels, torch.arange(N), feats, log_probs, D.Dist(), backend).state_dict()

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), backend), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["neighbours"], single["neighbours"]), f"rank {rank}: neighbour indices differ"
        assert torch.equal(got["clean_prob"], single["clean_prob"]), f"rank {rank}: clean probabilities differ"
        assert torch.equal(got["targets"], single["targets"]), f"rank {rank}: soft targets differ"
        assert torch.equal(got["loss_history"], single["loss_history"]), f"rank {rank}: loss history differs"
    # the test can fail: the phases really changed the state
    assert (single["neighbours"] >= 0).all()
    assert single["clean_prob"].min() < 0.5 < single["clean_prob"].max()


def test_uneven_gather_drops_padding_and_keeps_rank_order(tmp_path):
    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "gathered.pt")
    assert torch.equal(got, torch.cat([torch.arange(3) * 10, torch.arange(5) * 10 + 1]))


def _gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = torch.arange(3 if rank == 0 else 5) * 10 + rank
        out = D.all_gather_rows(rows)
        if rank == 0:
            torch.save(out, os.path.join(out_dir, "gathered.pt"))
    finally:
        td.destroy_process_group()


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


def _guard_worker(rank: int, init_file: str, out_dir: str) -> None:
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x, y, keep = guarded_batch()
        mine = slice(4 * rank, 4 * rank + 4)
        dist = D.current()
        grads = [guarded_grad(x[mine], y[mine], keep[mine], dist, own) for own in (False, True)]
        torch.save(grads, os.path.join(out_dir, f"guard{rank}.pt"))
    finally:
        td.destroy_process_group()


def test_a_guarded_loss_on_two_ranks_has_the_gradient_of_one_process(tmp_path):
    """method.guard weights each synthetic sample's loss; the weighted mean was each rank's own, so a rank whose
    samples all looked noisy counted as much as one whose samples looked clean (not so in one process)."""
    x, y, keep = guarded_batch()
    single = guarded_grad(x, y, keep, D.Dist())
    mp.spawn(_guard_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        global_mean, own_mean = torch.load(tmp_path / f"guard{rank}.pt")
        torch.testing.assert_close(global_mean, single)
        assert not torch.allclose(own_mean, single, atol=1e-3)  # each rank's own weighted mean: another gradient
