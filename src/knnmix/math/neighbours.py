"""Exact top-K cosine neighbours over a feature bank, behind a two-method interface.

``build(bank)`` indexes L2-normalised features ``(N, D)``; ``search(queries, k)`` returns inner products and
bank positions ``(Q, k)``, best first. :func:`neighbours_excluding_self` asks for one extra neighbour and drops
the query itself. :class:`FaissSearch` (``IndexFlatIP``) is the fast CPU path; :class:`TorchSearch` is an exact
matmul + topk reference (and runs on GPU).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from knnmix.errors import KnnmixError
from knnmix.math._checks import check_int, check_range, check_tensor


class NeighbourSearch(Protocol):
    def build(self, bank: Tensor) -> None:
        """Index a bank ``(N, D)`` of L2-normalised float features."""

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` by inner product: similarities ``(Q, k)`` float32 and bank positions ``(Q, k)`` int64."""


class FaissSearch:
    """faiss ``IndexFlatIP``: exact inner-product search on CPU."""

    def __init__(self, threads: int = 0) -> None:
        import faiss

        self._faiss = faiss
        if threads > 0:
            faiss.omp_set_num_threads(threads)
        self._index = None

    def build(self, bank: Tensor) -> None:
        _check_bank(bank)
        data = np.ascontiguousarray(bank.detach().float().cpu().numpy())
        self._index = self._faiss.IndexFlatIP(data.shape[1])
        self._index.add(data)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self._index is None:
            raise RuntimeError("call build() before search()")
        _check_queries(queries, self._index.d, k, self._index.ntotal)
        sims, idx = self._index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(sims), torch.from_numpy(idx).long()


class TorchSearch:
    """Exact matmul + topk in torch, in chunks of queries (bounded memory), on ``device`` (default: the bank's)."""

    def __init__(self, chunk: int = 4096, device: torch.device | str | None = None) -> None:
        self.chunk = chunk
        self.device = device
        self._bank: Tensor | None = None

    def build(self, bank: Tensor) -> None:
        _check_bank(bank)
        self._bank = bank.detach().float().to(self.device or bank.device)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self._bank is None:
            raise RuntimeError("call build() before search()")
        _check_queries(queries, self._bank.shape[1], k, self._bank.shape[0])
        sims, idx = [], []
        q = queries.detach().float().to(self._bank.device)
        for start in range(0, q.shape[0], self.chunk):
            s, i = torch.topk(q[start : start + self.chunk] @ self._bank.T, k, dim=1)
            sims.append(s.cpu())
            idx.append(i.cpu())
        if not sims:
            return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
        return torch.cat(sims), torch.cat(idx)


def l2_normalise(features: Tensor) -> Tensor:
    """Rows of ``(N, D)`` scaled to unit L2 norm (zero rows stay zero), so inner product = cosine similarity."""
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
    return F.normalize(features.float(), dim=1)


def neighbours_excluding_self(searcher: NeighbourSearch, bank: Tensor, query_positions: Tensor, k: int) -> Tensor:
    """Top-``k`` cosine neighbours ``(Q, k)`` (bank positions) of the bank rows ``query_positions`` ``(Q,)``.

    ``bank`` ``(N, D)`` must already be L2-normalised and built into ``searcher``. The query itself is never
    returned: ``k + 1`` are searched and the query's own position is dropped (or, when exact duplicates push it out
    of the list, the last candidate).
    """
    n = check_tensor(bank, "bank").shape[0]
    if not 1 <= check_int(k, "k", 1) < n:
        raise ValueError(f"k={k} neighbours need a bank of more than k samples, got {n}")
    if check_tensor(query_positions, "query_positions", "int").dim() != 1:
        raise ValueError(f"query_positions must be (Q,), got {tuple(query_positions.shape)}")
    check_range(query_positions, "query_positions", n, "rows of the bank")
    query_positions = query_positions.long()
    _, idx = searcher.search(bank[query_positions], k + 1)
    is_self = idx == query_positions[:, None].cpu()
    # Stable sort moves the query's own entry (if present) to the end, keeping the ranking of the others.
    order = torch.sort(is_self.to(torch.int8), dim=1, stable=True).indices
    return torch.gather(idx, 1, order)[:, :k].contiguous()


def neighbour_agreement(predicted: Tensor, neighbour_labels: Tensor) -> Tensor:
    """The share ``(N,)`` of each sample's neighbours whose label is the class predicted for it: ``predicted`` ``(N,)``
    int, ``neighbour_labels`` ``(N, K)`` int (the labels of each sample's ``K`` neighbours)."""
    if predicted.dim() != 1 or neighbour_labels.dim() != 2 or neighbour_labels.shape[0] != predicted.shape[0]:
        raise ValueError(f"predicted must be (N,) and neighbour_labels (N, K), got {tuple(predicted.shape)} and "
                         f"{tuple(neighbour_labels.shape)}")
    return (neighbour_labels == predicted[:, None]).float().mean(1)


def neighbours_within_batch(features: Tensor, k: int) -> Tensor:
    """Top-``k`` cosine neighbours ``(B, k)`` of each row of a batch's L2-normalised features ``(B, D)``, among the
    batch's other rows (positions in the batch, best first; the authors' MixNN mixes within the mini-batch).

    A batch of ``B <= k`` rows cannot give ``k`` others: positions then repeat the best ones found (a batch of one
    row mixes with itself).
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (B, D) tensor, got {tuple(features.shape)}")
    check_int(k, "k", 1)
    b = features.shape[0]
    if b == 1:
        return torch.zeros(1, k, dtype=torch.long)
    sims = features.float() @ features.float().T
    sims.fill_diagonal_(float("-inf"))
    idx = torch.topk(sims, min(k, b - 1), dim=1).indices
    if idx.shape[1] < k:
        idx = idx[:, torch.arange(k) % idx.shape[1]]
    return idx


def _check_bank(bank: Tensor) -> None:
    if check_tensor(bank, "bank").dim() != 2 or bank.shape[0] == 0:
        raise ValueError(f"bank must be a non-empty (N, D) tensor, got {tuple(bank.shape)}")
    _check_finite(bank, "bank")


def _check_queries(queries: Tensor, d: int, k: int, n: int) -> None:
    if check_tensor(queries, "queries").dim() != 2 or queries.shape[1] != d:
        raise ValueError(f"queries must be (Q, {d}), got {tuple(queries.shape)}")
    if not 1 <= check_int(k, "k", 1) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    _check_finite(queries, "queries")


def _check_finite(x: Tensor, name: str) -> None:
    """NaN or inf features have no neighbours (faiss returns position -1, which would index the last sample)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        rows = int((~torch.isfinite(x)).any(dim=1).sum())
        raise KnnmixError(f"{name} {tuple(x.shape)} holds NaN or infinite values in {rows} rows (a diverged model?)")
