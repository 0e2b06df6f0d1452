"""What the method costs, measured side by side in one run.

1. Epoch time of the neighbour-mixing phase versus plain cross-entropy, same network, data and batch size, the
   epochs of all interleaved so that all see the same machine load: with the bank refreshed every 1 and 2 epochs,
   and with a correction every epoch. The mixing epoch is split into its phases: the no-augmentation embedding pass,
   the mixture fit, the neighbour search, the correction, and the training pass.
2. How long gathering the feature bank across two torch.distributed (gloo) processes and the exact neighbour search
   take as the bank grows (10k, 100k, 1M synthetic features), and what an IVF index buys at 1M.

Usage::

    python benchmarks/scaling.py                       # full run, prints tables, writes benchmarks/results/scaling-<date>.json
    python benchmarks/scaling.py --sizes 10000 --quick  # a smoke version (CI)

Timings are wall-clock on whatever machine runs it; the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from knnmix import config as C
from knnmix.methods import dist as D
from knnmix.methods import phases
from knnmix.engine import train as E
from knnmix.math import FaissSearch, l2_normalise, neighbours_excluding_self
from knnmix.provenance import git_commit, machine

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------------------------
# 1. epoch overhead


class PhaseTimer:
    """Wraps the engine's phase functions to time them (the engine itself stays free of timing code)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._saved: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t

        self._saved.append((owner, name, fn))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)


def epoch_overhead(dataset: str, train_subset: int | None, epochs: int, threads: int,
                   bank_every: tuple[int, ...] = (1, 2)) -> dict:
    """Median epoch time of knnmix's mixing phase against ce's, the epochs of ce, of knnmix with each
    ``method.bank_every`` and of knnmix correcting every epoch interleaved so that all see the same machine load."""
    base = {
        "data.name": dataset,
        "data.train_subset": train_subset,
        "noise.spec": "symmetric:0.4",
        "model.name": "small_cnn",
        "epochs": epochs + 1,
        "threads": threads,
        "out": tempfile.mkdtemp(),
        "optim.batch_size": 128,
    }
    variants = {f"knnmix_bank_every_{every}": {"method.bank_every": every, "method.correction_period": epochs + 10}
                for every in bank_every}  # no correction after epoch 1 (untimed)
    # a correction every epoch (the quick tier's schedule): a bank every epoch, searched once for the default gate's
    # neighbour vote (method.vote_k) and the K mixing partners
    variants["knnmix_correcting_every_epoch"] = {"method.correction_period": 1}
    runs = {"ce": E.build_run(C.replace(C.from_dict({}), **base, **{"method.name": "ce"}))}
    for name, overrides in variants.items():
        runs[name] = E.build_run(C.replace(
            C.from_dict({}), **base,
            **{"method.name": "knnmix", "method.warmup_epochs": 0, "method.correction_start": 1, "method.k": 1},
            **overrides,
        ))
    timers = {name: PhaseTimer() for name in runs if name != "ce"}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for epoch in range(1, epochs + 2):  # epoch 1 is a warm-up for all, not counted
        for name, run in runs.items():
            timer = timers.get(name)
            if timer is not None:
                timer.wrap(run, "embed_train_set", "embed")
                for fn, label in (("fit_mixture", "mixture"), ("bank_neighbours", "search"),
                                  ("correct_targets", "correction")):
                    timer.wrap(phases, fn, label)
                before = dict(timer.totals)
            try:
                rec = E.run_epoch(run, epoch)
            finally:
                if timer is not None:
                    timer.restore()
            run.epoch = epoch
            if epoch > 1:
                times[name].append(rec["train_time_s"])
            elif timer is not None:
                timer.totals = before
    ce_t = statistics.median(times["ce"])
    out = {"dataset": dataset, "train_size": len(runs["ce"].splits.train), "epochs_timed": epochs,
           "ce_epoch_s": ce_t, "knnmix": {}}
    for name, timer in timers.items():
        t = statistics.mean(times[name])  # mean: with bank_every > 1 the epochs alternate long and short
        out["knnmix"][name] = {"epoch_s": t, "ratio": t / ce_t,
                               "phase_s": {k: v / max(epochs, 1) for k, v in timer.totals.items()}}
    return out


# ---------------------------------------------------------------------------------------------------------------
# 2. bank gather and neighbour search


def _gather_worker(rank: int, init: str, n: int, dim: int, repeats: int, out: str) -> None:
    td.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        share = n // 2 + (rank < n % 2)
        feats = torch.randn(share, dim)
        index = torch.arange(rank, n, 2)
        logp = torch.log_softmax(torch.randn(share, 10), dim=1)
        dist = D.current()
        phases.gather_bank(index, feats, logp, dist)  # warm-up
        td.barrier()
        t = time.perf_counter()
        for _ in range(repeats):
            phases.gather_bank(index, feats, logp, dist)
        elapsed = (time.perf_counter() - t) / repeats
        if rank == 0:
            Path(out).write_text(json.dumps({"gather_s": elapsed}))
    finally:
        td.destroy_process_group()


def gather_time(n: int, dim: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        repeats = 3 if n <= 100_000 else 1
        mp.spawn(_gather_worker, args=(os.path.join(tmp, "init"), n, dim, repeats, out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())["gather_s"]


def search_times(n: int, dim: int, k: int, threads: int, max_queries: int) -> dict:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(256, dim, generator=g)
    bank = l2_normalise(centres[torch.randint(0, 256, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g))
    queries = torch.arange(min(n, max_queries))
    searcher = FaissSearch(threads=threads)
    t = time.perf_counter()
    searcher.build(bank)
    build = time.perf_counter() - t
    t = time.perf_counter()
    exact = neighbours_excluding_self(searcher, bank, queries, k)
    per_query = (time.perf_counter() - t) / len(queries)
    row = {
        "n": n,
        "dim": dim,
        "k": k,
        "flat_build_s": build,
        "queries_timed": len(queries),
        "flat_search_all_s": per_query * n,
        "flat_search_extrapolated": len(queries) < n,
    }
    if n >= 100_000:
        row.update(ivf_search(bank, queries, exact, k, threads))
    return row


def ivf_search(bank: torch.Tensor, queries: torch.Tensor, exact: torch.Tensor, k: int, threads: int) -> dict:
    import faiss

    faiss.omp_set_num_threads(threads)
    n, dim = bank.shape
    nlist = int(4 * np.sqrt(n))
    data = np.ascontiguousarray(bank.numpy())
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    train = data[np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)]
    index.train(train)
    index.add(data)
    build = time.perf_counter() - t
    index.nprobe = 16
    t = time.perf_counter()
    _, idx = index.search(data[queries.numpy()], k + 1)
    per_query = (time.perf_counter() - t) / len(queries)
    found = torch.from_numpy(idx)
    recall = np.mean([len(set(found[i].tolist()) & set(exact[i].tolist())) / k for i in range(len(queries))])
    return {"ivf_nlist": nlist, "ivf_nprobe": 16, "ivf_build_s": build, "ivf_search_all_s": per_query * n,
            "ivf_recall_at_k": float(recall)}


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=4, help="timed epochs per method (after one warm-up epoch)")
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                   help="bank sizes to time (none: the epoch time only)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension of the synthetic bank (PreAct ResNet-18: 512)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-queries", type=int, default=20_000, help="queries timed per size; beyond, time is extrapolated")
    p.add_argument("--quick", action="store_true", help="smoke version: digits, 1 timed epoch")
    p.add_argument("--out", help="result JSON (default benchmarks/results/scaling-<date>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.dataset, args.train_subset, args.epochs = "digits", None, 1
    from knnmix.data import DATASETS

    if args.dataset not in DATASETS:
        p.error(f"--dataset {args.dataset!r}: not a knnmix dataset ({', '.join(DATASETS.names())})")
    # the smoke version's result is a check only: written where --out says, never into benchmarks/results
    out = Path(args.out) if args.out else None if args.quick else RESULTS / f"scaling-{time.strftime('%Y-%m-%d')}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    print(f"# knnmix scaling benchmark ({git_commit()[:12]})", flush=True)
    over = epoch_overhead(args.dataset, args.train_subset, args.epochs, args.threads)
    print(f"\n## Epoch time, {over['dataset']} ({over['train_size']} training images), small_cnn, batch 128, "
          f"{over['epochs_timed']} interleaved epochs each (ce: median; knnmix: mean)\n")
    print("| method | epoch (s) | / ce | per epoch: embed, mixture fit, search, correction (s) |\n|---|---|---|---|")
    print(f"| ce | {over['ce_epoch_s']:.2f} | 1.00 | |")
    for name, r in over["knnmix"].items():
        ph = r["phase_s"]
        print(f"| {name.replace('_', ' ')} (mixing phase, K=1) | {r['epoch_s']:.2f} | **{r['ratio']:.2f}x** | "
              + ", ".join(f"{ph.get(k, 0):.2f}" for k in ("embed", "mixture", "search", "correction")) + " |")

    rows = []
    if args.sizes:
        print(f"\n## Feature bank: gather over 2 gloo processes, exact top-{args.k} search (faiss IndexFlatIP, "
              f"{args.threads} threads), d={args.dim}\n")
        print("| bank size | gather (s) | flat search, all queries (s) | IVF build (s) | IVF search, all queries (s) "
              "| IVF recall@k |")
        print("|---|---|---|---|---|---|")
        for n in args.sizes:
            row = search_times(n, args.dim, args.k, args.threads, args.max_queries)
            row["gather_s"] = gather_time(n, args.dim)
            rows.append(row)
            flat = f"{row['flat_search_all_s']:.1f}" + (" (extrapolated)" if row["flat_search_extrapolated"] else "")
            ivf = f"{row['ivf_search_all_s']:.1f}" if "ivf_search_all_s" in row else "-"
            build = f"{row['ivf_build_s']:.1f}" if "ivf_build_s" in row else "-"
            rec = f"{row['ivf_recall_at_k']:.3f}" if "ivf_recall_at_k" in row else "-"
            print(f"| {n:,} | {row['gather_s']:.2f} | {flat} | {build} | {ivf} | {rec} |", flush=True)


    typed = sys.argv[1:] if argv is None else list(argv)  # (main([]) is no command line of its own)
    result = {"command": shlex.join(["python", "benchmarks/scaling.py", *typed]), "commit": git_commit(),
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), "epoch_overhead": over, "bank": rows}
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
