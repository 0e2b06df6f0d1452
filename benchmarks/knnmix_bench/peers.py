"""Reference runs on the same engine, network, augmentation, epochs and seeds as the methods.

- ``cleanlab``: confident learning (Northcutt et al., JAIR 2021) through cleanlab's own package, the standard
  CleanLearning recipe: K-fold cross-validated predicted probabilities from the same network trained with
  cross-entropy, ``cleanlab.filter.find_label_issues`` on them, then cross-entropy retraining on what it keeps.
- ``oracle``: cross-entropy trained only on the truly clean samples of the same split (where the true labels are
  known): the headroom a setting leaves, not a method.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from knnmix import config as C
from knnmix.engine import train as E
from knnmix.engine.checkpoint import RunFolder, folder_lock
from knnmix.engine.splits import Splits, build_splits
from knnmix.errors import KnnmixError


def out_of_fold_probabilities(cfg: C.Config, splits: Splits, folds: int) -> np.ndarray:
    """``(N, C)`` predicted probabilities of every training sample from a model that did not train on it."""
    n = len(splits.train)
    order = np.random.default_rng([cfg.seed, 0xC1EA]).permutation(n)
    probs = torch.empty(n, splits.num_classes)
    for f in range(folds):
        held = np.sort(order[f::folds])
        kept = np.setdiff1d(np.arange(n), held)
        fold = _with_train(splits, kept, val=None, test=None)
        run = E.build_run(cfg, splits=fold)
        for epoch in range(1, cfg.epochs + 1):
            E.run_epoch(run, epoch)
            run.epoch = epoch
        probs[held] = E.predict(run, splits.train.subset(held))
    return probs.numpy()


def _with_train(splits: Splits, keep: np.ndarray, **changes: Any) -> Splits:
    """The splits with only the training samples at positions ``keep``."""
    return dataclasses.replace(splits, train=splits.train.subset(keep), train_rows=splits.train_rows[keep], **changes)


def _train_on(cfg: C.Config, splits: Splits) -> dict[str, Any]:
    folder = RunFolder(cfg.out)
    with folder_lock(folder.path):
        E.prepare_folder(folder, resume=False, overwrite=True)
        run = E.build_run(cfg, splits=splits)
        folder.start(run.cfg, run.splits.noisy_labels_record())
        return E.fit(run, folder, echo=None)


def confident_learning(cfg: C.Config, *, folds: int = 3) -> dict[str, Any]:
    """Run the CleanLearning recipe; returns the retrained run's summary plus the filter's figures.

    ``cfg`` is the cross-entropy configuration shared with the other methods (its ``method`` section is ignored:
    every model here trains with ``ce``). The retrained run is written to ``cfg.out`` like any run.
    """
    from cleanlab.filter import find_label_issues

    start = time.perf_counter()
    cfg = C.replace(cfg, **{"method.name": "ce"})
    splits = build_splits(cfg)
    probs = out_of_fold_probabilities(cfg, splits, folds)
    given = splits.train.given_labels
    issues = find_label_issues(given, probs, filter_by="prune_by_noise_rate", n_jobs=1)  # no pool in a worker
    summary = _train_on(cfg, _with_train(splits, np.flatnonzero(~issues)))
    summary["method"] = "cleanlab"
    summary["total_time_s"] = time.perf_counter() - start
    summary["cleanlab"] = {"folds": folds, "flagged": int(issues.sum()), "kept": int((~issues).sum())}
    if splits.train.true_labels is not None:
        wrong = given != splits.train.true_labels
        hits = int((issues & wrong).sum())
        summary["final"]["noisy_precision"] = 100.0 * hits / max(int(issues.sum()), 1)
        summary["final"]["noisy_recall"] = 100.0 * hits / max(int(wrong.sum()), 1)
    return summary


def oracle(cfg: C.Config) -> dict[str, Any]:
    """Cross-entropy on the truly clean training samples only (same split, network, epochs, seed)."""
    start = time.perf_counter()
    cfg = C.replace(cfg, **{"method.name": "ce"})
    splits = build_splits(cfg)
    true = splits.train.true_labels
    if true is None:
        raise KnnmixError(f"the oracle needs the true labels, which {cfg.data.name} does not have")
    clean = np.flatnonzero(splits.train.given_labels == true)
    summary = _train_on(cfg, _with_train(splits, clean))
    summary["method"] = "oracle"
    summary["total_time_s"] = time.perf_counter() - start
    summary["oracle"] = {"clean_samples": int(len(clean))}
    return summary
