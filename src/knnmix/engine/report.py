"""What a run reports: its progress lines, ``summary.json`` and the label audit (``label_issues.csv`` / ``.png``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from knnmix import config as C
from knnmix.audit import find_label_issues, plot_label_issues, write_label_issues
from knnmix.engine.checkpoint import BEST_MODEL, LABEL_ISSUES, LABEL_ISSUES_PLOT, RunFolder
from knnmix.methods.phases import Bank
from knnmix.provenance import git_commit

if TYPE_CHECKING:
    from knnmix.engine.train import Run

AUDIT_PLOT_SIZE = 32  # suspects shown in label_issues.png


def train_noise_rate(run: Run) -> float | None:
    """The share of the training rows whose given label is wrong, where the true labels are known."""
    noisy = run.truly_noisy
    return None if noisy is None else float(noisy.double().mean())


def summary(run: Run) -> dict[str, Any]:
    cfg, splits = run.cfg, run.splits
    last = run.history[-1] if run.history else {}
    times = [r["train_time_s"] for r in run.history]
    return {
        "method": cfg.method.name,
        "dataset": cfg.data.name,
        "noise": cfg.noise.spec,
        "noise_rate": splits.noise.noise_rate,
        "train_noise_rate": train_noise_rate(run),
        "model": cfg.model.name,
        "seed": cfg.seed,
        "epochs": run.epoch,
        "train_size": len(splits.train),
        "val_size": len(splits.val) if splits.val is not None else 0,
        "final": {k: last.get(k) for k in ("val_acc", "test_acc", "label_acc", "noisy_precision", "noisy_recall")},
        "best_val": dict(run.best),
        "epoch_time_s": float(np.mean(times)) if times else None,
        "world_size": run.dist.world_size,
        "commit": git_commit(),
        "config": C.to_dict(cfg),
    }


def label_audit(run: Run, bank: Bank, folder: RunFolder) -> dict[str, Any]:
    """Write ``label_issues.csv`` (and ``.png``) from the final model; return counts (and quality where truth is
    known)."""
    train = run.splits.train
    given = train.given_labels[bank.index.numpy()]
    # The suggestion is the final model's prediction: the soft targets move slowly by design (momentum 0.9 every
    # correction_period epochs), so their argmax still names the given label long after the network disagrees.
    table = find_label_issues(given, bank.log_probs.exp().numpy(), seed=run.cfg.seed)
    table["index"] = bank.index.numpy()[table["index"]]
    extra: dict[str, Any] = {}
    if train.true_labels is not None:
        extra["true_label"] = train.true_labels
    source = train.source
    if source.path(0) is not None:
        extra["path"] = [source.path(int(r)) for r in train.rows]
    write_label_issues(folder.file(LABEL_ISSUES), table, rows=run.splits.train_rows, class_names=train.classes,
                       extra=extra)
    top = table["index"][:AUDIT_PLOT_SIZE]
    try:
        images = source.preview(torch.from_numpy(train.rows[top]))
    except NotImplementedError:  # a source that cannot show its images gets no plot
        pass
    else:
        given, suggested = ([train.classes[int(c)] for c in table[k][: len(top)]]
                            for k in ("given_label", "corrected_label"))
        plot_label_issues(folder.file(LABEL_ISSUES_PLOT), images, given, suggested, table["clean_prob"][: len(top)],
                          title=f"{run.cfg.data.name}: the {len(top)} labels most likely wrong ({run.cfg.method.name})")
    flagged = table["is_label_issue"]
    out: dict[str, Any] = {"flagged": int(flagged.sum()), "total": int(len(flagged))}
    if train.true_labels is not None:
        wrong = train.given_labels[table["index"]] != train.true_labels[table["index"]]
        hits, k = int((flagged & wrong).sum()), int(wrong.sum())
        out["precision"] = 100.0 * hits / max(out["flagged"], 1)
        out["recall"] = 100.0 * hits / max(k, 1)
        out["precision_at_noisy_count"] = 100.0 * float(wrong[:k].mean()) if k else None
    return out


def noise_note(spec: str, added: float, measured: float | None) -> str:
    """How wrong the training labels are: ``measured`` (of the rows trained on, where the true labels are known), or
    for labels that are noisy already (it said "measured 0.00%") the share of noise ``spec`` ``added`` to them."""
    if measured is not None:
        return f"measured {100 * measured:.2f}%"
    return (f"{100 * added:.2f}% added to " if spec != "none" else "") + "labels whose own noise is unknown"


def banner(run: Run) -> str:
    c, s = run.cfg, run.splits
    noise = noise_note(s.noise.spec, s.noise.noise_rate, train_noise_rate(run))
    return (
        f"knnmix: {c.method.name} on {c.data.name} ({len(s.train)} train / "
        f"{len(s.val) if s.val is not None else 0} {'noisy val' if s.bundle.val is None else 'val of its own'} / "
        f"{len(s.test) if s.test is not None else 0} test, "
        f"{'x'.join(map(str, s.train.source.shape[1:]))} px), noise {c.noise.spec} ({noise}), "
        f"{c.model.name}, {c.epochs} epochs, seed {c.seed}, {run.dist.world_size} process(es) on {run.device}"
    )


def progress_line(r: dict[str, Any], epochs: int, eta_s: float | None = None) -> str:
    """One epoch's line; ``eta_s``: the estimated seconds left (shown from the first epoch on, until the last)."""
    parts = [
        f"epoch {r['epoch']:>3}/{epochs}",
        f"[{r['phase']}]",
        f"loss {r['train_loss']:.4f}",
        f"val {pct(r['val_acc'])}",
        f"test {pct(r['test_acc'])}",
    ]
    if r.get("label_acc") is not None:
        parts.append(f"labels {pct(r['label_acc'])}")
    if r.get("noisy_precision") is not None or r.get("noisy_recall") is not None:
        parts.append(f"noisy P/R {pct(r.get('noisy_precision'))}/{pct(r.get('noisy_recall'))}")
    parts += [f"lr {r['lr']:.4g}", f"{r['train_time_s']:.1f}s"]
    if eta_s is not None and r["epoch"] < epochs:
        left = round(eta_s)
        parts.append(f"~{left // 3600}h{left % 3600 // 60:02d}m left" if left >= 3600 else f"~{left // 60}m{left % 60:02d}s left")
    return "  ".join(parts)


#: Why a run has no test accuracy (with a test split, its last epoch is always tested).
NO_TEST = "the data has no test split; imagefolder: data.test_root, or audit --test, names one"


def done_line(summary: dict[str, Any], folder: RunFolder) -> str:
    best, last = summary["best_val"], summary["final"]["test_acc"]
    if best["val_acc"] is None:
        selected = f"no validation split, so {BEST_MODEL} holds the last epoch"
    elif last is None:
        selected = f"val-selected epoch {best['epoch']}"
    else:
        selected = f"val-selected test acc {pct(best['test_acc'])} (epoch {best['epoch']})"
    tested = f"no test accuracy ({NO_TEST})" if last is None else f"last-epoch test acc {pct(last)}"
    return (
        f"done: {tested}, {selected}; "
        f"{summary['label_issues']['flagged']} labels flagged in {folder.file(LABEL_ISSUES)}"
    )


def numeric(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch record's numbers (what Ray Tune and Ray Train are told of the epoch)."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def pct(v: float | None, sign: str = "%") -> str:
    """A percentage to two decimals, or ``n/a``; a table whose header says ``(%)`` passes ``sign=""``."""
    return "n/a" if v is None else f"{v:.2f}{sign}"
