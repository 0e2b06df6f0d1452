"""The sweep's plots, from run records (matplotlib, Agg): learning curves, clean probabilities, best accuracy per
noise setting, parameter importances."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, *, tight: bool = True) -> Path:
    """Lay out ``fig`` (``tight``: matplotlib's tight layout; off for a figure placed by hand), write it to ``path``
    (110 dpi) and close it."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_learning_curves(path: Path, curves: dict[str, list[dict[str, Any]]], best: str | None, title: str) -> Path:
    """Noisy-validation accuracy per epoch of every trial (the best one bold, its test accuracy dashed) and the
    training loss."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax, ax2) = pyplot().subplots(1, 2, figsize=(11, 4))
    for tid, recs in curves.items():
        val = [(r["epoch"], r["val_acc"]) for r in recs if r.get("val_acc") is not None]
        lw, alpha = (2.5, 1.0) if tid == best else (1.0, 0.5)
        ax.plot(*zip(*val), "o-", ms=3, lw=lw, alpha=alpha, label=tid + (" (best)" if tid == best else ""))
        ax2.plot([r["epoch"] for r in recs], [r["train_loss"] for r in recs], "o-", ms=3, lw=lw, alpha=alpha)
        if tid == best:
            ax.plot([r["epoch"] for r in recs], [r.get("test_acc") for r in recs], "k--", lw=1.2,
                    label=f"{tid} test (reported only)")
    ax.set(xlabel="epoch", ylabel="noisy-validation accuracy (%)")
    ax2.set(xlabel="epoch", ylabel="training loss")
    ax.legend(fontsize=6)
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title}: every trial")
    return save(fig, path)


def plot_clean_prob_histogram(path: Path, label_issues_csv: Path, title: str) -> Path | None:
    """Histogram of the final clean probabilities, split by truly clean / truly noisy given labels (where the truth
    is known: the ``true_label`` column); ``None`` when it is not."""
    if not label_issues_csv.exists():
        return None
    with open(label_issues_csv) as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "true_label" not in rows[0]:
        return None
    clean = [float(r["clean_prob"]) for r in rows if r["given_label"] == r["true_label"]]
    noisy = [float(r["clean_prob"]) for r in rows if r["given_label"] != r["true_label"]]
    fig, ax = pyplot().subplots(figsize=(6, 4))
    bins = [i / 20 for i in range(21)]
    ax.hist(clean, bins=bins, alpha=0.6, label=f"truly clean labels ({len(clean)})")
    ax.hist(noisy, bins=bins, alpha=0.6, label=f"truly noisy labels ({len(noisy)})")
    ax.set(xlabel="clean probability of the given label", ylabel="training samples", yscale="log", title=title)
    ax.legend()
    return save(fig, path)


def plot_best_per_noise(path: Path, settings: list[dict[str, Any]], title: str) -> Path:
    """The sweep's best noisy-validation accuracy per noise setting, with the test accuracy of that trial."""
    names = [s["noise"] for s in settings]
    val = [(s.get("best") or {}).get("val_acc") or 0.0 for s in settings]
    test = [(s.get("best") or {}).get("test_acc") or 0.0 for s in settings]
    x = list(range(len(names)))
    fig, ax = pyplot().subplots(figsize=(max(5, 1.6 * len(names)), 4))
    for shift, heights, label in ((-0.2, val, "best noisy-validation acc (selected on)"),
                                  (0.2, test, "its test acc (reported only)")):
        ax.bar_label(ax.bar([i + shift for i in x], heights, width=0.4, label=label), fmt="%.1f", fontsize=7)
    ax.set_xticks(x, names, rotation=15)
    ax.set(ylabel="accuracy (%)", ylim=(0, 105), title=title)
    ax.legend(fontsize=8, loc="lower left")
    return save(fig, path)


def plot_importances(path: Path, importances: dict[str, float], title: str) -> Path:
    keys = list(importances)[::-1]
    fig, ax = pyplot().subplots(figsize=(6, 0.5 * len(keys) + 1.5))
    ax.barh(keys, [importances[k] for k in keys])
    ax.set(xlabel="importance (fANOVA) for the best epoch's noisy-validation accuracy", title=title)
    return save(fig, path)
