"""``torch.distributed`` helpers that degrade to no-ops with one process and no process group.

The engine never asks whether it runs under Ray: it asks this module for the rank and world size and calls
collectives that gather index-aligned per-sample tensors. Shards may be uneven; tensors are padded to the largest
shard for the collective and the padding is dropped again, so what comes back is exactly the concatenation of the
ranks' rows in rank order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import Tensor
from torch.utils.data import BatchSampler, DistributedSampler


@dataclass(frozen=True)
class Dist:
    """Who this process is in the (possibly absent) process group."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> Dist:
    """Rank and world size of the default process group, or ``Dist()`` when there is none."""
    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size())
    return Dist()


def _comm_device() -> torch.device:
    """Where a collective's tensors live: NCCL needs CUDA tensors, gloo takes CPU tensors."""
    if td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(t: Tensor, dist: Dist | None = None) -> Tensor:
    """Concatenate every rank's rows ``(n_r, ...)`` in rank order -> ``(sum n_r, ...)``; shards may differ in size."""
    dist = dist or current()
    if not dist.active:
        return t
    dev = _comm_device()
    x = t.to(dev)
    sizes = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(dist.world_size)]
    td.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=dev))
    counts = [int(s.item()) for s in sizes]
    x = torch.cat([x, x.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))])  # padded to the largest shard
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    td.all_gather(parts, x.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)


def _on_comm_device(t: Tensor, dist: Dist, op: Callable[[Tensor], object]) -> Tensor:
    """The in-place collective ``op`` run on a copy of ``t`` on the communication device, the result on ``t``'s
    device (``t`` itself with one process)."""
    if not dist.active:
        return t
    x = t.to(_comm_device(), copy=True).contiguous()
    op(x)
    return x.to(t.device)


def broadcast(t: Tensor, src: int, dist: Dist) -> Tensor:
    """Rank ``src``'s tensor on every rank (same shape and dtype on all ranks)."""
    return _on_comm_device(t, dist, lambda x: td.broadcast(x, src))


def all_reduce_sum(t: Tensor, dist: Dist) -> Tensor:
    return _on_comm_device(t, dist, lambda x: td.all_reduce(x, op=td.ReduceOp.SUM))


def mean_weight_total(weights: Tensor, dist: Dist) -> Tensor:
    """The sum of every rank's loss ``weights`` over the world size: the divisor of a weighted mean loss whose ranks'
    gradients, averaged (DDP), are the global batch's weighted mean's (each rank's own sum with one process)."""
    return all_reduce_sum(weights.sum().detach(), dist) / dist.world_size


def shard(positions: Tensor, dist: Dist) -> Tensor:
    """This rank's strided share ``positions[rank::world]`` of a 1-D index tensor; no padding, shards differ by <= 1."""
    return positions[dist.rank :: dist.world_size]


def epoch_batches(positions: Tensor, batch_size: int, dist: Dist, *, seed: int, epoch: int) -> Iterator[Tensor]:
    """Training batches of this rank for one epoch, as tensors of dataset indices.

    ``DistributedSampler``'s shuffle, seeded by (seed, epoch): the same permutation of ``positions`` on every rank,
    padded by wrapping around to a multiple of the world size so that every rank runs the same number of steps
    under DDP; rank r takes every world-size-th element. ``batch_size`` is per rank; the last batch may be smaller.
    """
    sampler = DistributedSampler(positions, dist.world_size, dist.rank, seed=seed * 100_003)  # type: ignore[arg-type]
    sampler.set_epoch(epoch)
    for batch in BatchSampler(sampler, batch_size, drop_last=False):
        yield positions[batch]
