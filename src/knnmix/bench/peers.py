"""External peers run on the same engine, network, augmentation, epochs and seeds.

Confident learning (Northcutt et al., JAIR 2021) through cleanlab's own package, the standard CleanLearning recipe:
K-fold cross-validated predicted probabilities from the same network trained with cross-entropy, ``cleanlab.filter.
find_label_issues`` on them, then cross-entropy retraining on the samples it keeps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from knnmix import config as C
from knnmix.engine.loop import Engine, check_run_folder
from knnmix.engine.outputs import RunFolder
from knnmix.engine.splits import Splits, build_splits


def out_of_fold_probabilities(cfg: C.Config, splits: Splits, folds: int) -> np.ndarray:
    """``(N, C)`` predicted probabilities of every training sample from a model that did not train on it."""
    n = len(splits.train)
    order = np.random.default_rng([cfg.seed, 0xC1EA]).permutation(n)
    probs = torch.empty(n, splits.num_classes)
    for f in range(folds):
        held = np.sort(order[f::folds])
        kept = np.setdiff1d(np.arange(n), held)
        fold = Splits(
            bundle=splits.bundle, noise=splits.noise, train=splits.train.subset(kept), val=None, test=None,
            train_rows=splits.train_rows[kept], val_rows=splits.val_rows,
        )
        engine = Engine(cfg, splits=fold, echo=None)
        for epoch in range(1, cfg.epochs + 1):
            engine.run_epoch(epoch)
            engine.epoch = epoch
        probs[held] = engine.predict(splits.train.subset(held))
    return probs.numpy()


def confident_learning(cfg: C.Config, *, folds: int = 3, overwrite: bool = True) -> dict[str, Any]:
    """Run the CleanLearning recipe; returns the retrained run's summary plus the filter's figures.

    ``cfg`` is the cross-entropy configuration shared with the other methods (its ``method`` section is ignored:
    every model here trains with ``ce``). The retrained run is written to ``cfg.out`` like any run.
    """
    from cleanlab.filter import find_label_issues

    start = time.perf_counter()
    cfg = C.replace(cfg, **{"method.name": "ce"})
    folder = RunFolder(cfg.out)
    check_run_folder(folder, resume=False, overwrite=overwrite)
    splits = build_splits(cfg)
    probs = out_of_fold_probabilities(cfg, splits, folds)
    given = splits.train.given_labels
    issues = find_label_issues(given, probs, filter_by="prune_by_noise_rate")
    keep = np.flatnonzero(~issues)
    cleaned = Splits(
        bundle=splits.bundle, noise=splits.noise, train=splits.train.subset(keep), val=splits.val,
        test=splits.test, train_rows=splits.train_rows[keep], val_rows=splits.val_rows,
    )
    engine = Engine(cfg, splits=cleaned, folder=folder, echo=None)
    engine.start_outputs()
    summary = engine.fit()
    summary["method"] = "cleanlab"
    summary["total_time_s"] = time.perf_counter() - start
    summary["cleanlab"] = {"folds": folds, "flagged": int(issues.sum()), "kept": int(len(keep))}
    if splits.train.true_labels is not None:
        wrong = given != splits.train.true_labels
        hits = int((issues & wrong).sum())
        summary["final"]["noisy_precision"] = 100.0 * hits / max(int(issues.sum()), 1)
        summary["final"]["noisy_recall"] = 100.0 * hits / max(int(wrong.sum()), 1)
    return summary
