"""Run a tier cell by cell, aggregate mean ± std over seeds, and write the JSON, the markdown table and the plot."""

from __future__ import annotations

import json
import statistics
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from knnmix import config as C
from knnmix.bench.peers import confident_learning
from knnmix.bench.tiers import Tier
from knnmix.engine.loop import train
from knnmix.engine.outputs import METRICS, read_metrics
from knnmix.provenance import git_commit, machine

#: The figures kept per cell (percentages, seconds).
CELL_FIGURES = (
    "last_test_acc",
    "selected_test_acc",
    "best_val_acc",
    "label_acc",
    "noisy_precision",
    "noisy_recall",
    "epoch_time_s",
    "total_time_s",
)


def run_cell(tier: Tier, method: str, setting: str, seed: int, out: Path, cfg_overrides: Sequence[str] = ()) -> dict:
    """Train one (method, noise setting, seed) cell into ``out``; return its figures."""
    values = tier.cell_config(method, setting, seed)
    values["out"] = str(out)
    values["log_every"] = 10**6
    cfg = C.replace(C.from_dict({}), **values)
    for item in cfg_overrides:
        key, value = C.parse_override(item)
        cfg = C.replace(cfg, **{key: value})
    start = time.perf_counter()
    if method == "cleanlab":
        summary = confident_learning(cfg, folds=tier.cleanlab_folds)
    else:
        summary = train(cfg, overwrite=True, echo=None)
        summary["total_time_s"] = time.perf_counter() - start
    epochs = read_metrics(out / METRICS)
    return {
        "method": method,
        "setting": setting,
        "seed": seed,
        "last_test_acc": summary["final"]["test_acc"],
        "selected_test_acc": summary["best_val"]["test_acc"],
        "selected_epoch": summary["best_val"]["epoch"],
        "best_val_acc": summary["best_val"]["val_acc"],
        "label_acc": summary["final"].get("label_acc"),
        "noisy_precision": summary["final"].get("noisy_precision"),
        "noisy_recall": summary["final"].get("noisy_recall"),
        "epoch_time_s": statistics.mean(r["train_time_s"] for r in epochs),
        "total_time_s": summary["total_time_s"],
        "noise_rate": summary["noise_rate"],
        "train_size": summary["train_size"],
        "extra": summary.get("cleanlab"),
    }


def run_tier(
    tier: Tier,
    runs_dir: Path,
    *,
    seeds: Sequence[int] | None = None,
    settings: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    cfg_overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Every cell of the tier. Seeds are the outer loop and methods the inner one, so that every method sees the
    machine in the same state (and a cut-short run still holds complete comparisons)."""
    cells = []
    for seed in seeds or tier.seeds:
        for setting in settings or tier.settings:
            for method in methods or tier.methods:
                out = runs_dir / tier.name / setting.replace(":", "-") / method / f"seed{seed}"
                cell = run_cell(tier, method, setting, seed, out, cfg_overrides)
                cells.append(cell)
                echo(
                    f"{tier.name} seed {seed} {setting:>15} {method:>8}: last {cell['last_test_acc']:.2f}  "
                    f"selected {cell['selected_test_acc']:.2f}  epoch {cell['epoch_time_s']:.2f}s  "
                    f"total {cell['total_time_s']:.0f}s"
                )
    return cells


def aggregate(cells: Sequence[dict]) -> list[dict]:
    """Mean and sample std over seeds per (setting, method), in the order cells first appear."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["setting"], c["method"]), []).append(c)
    rows = []
    for (setting, method), group in groups.items():
        row: dict[str, Any] = {"setting": setting, "method": method, "seeds": [c["seed"] for c in group]}
        for key in CELL_FIGURES:
            values = [c[key] for c in group if c[key] is not None]
            row[key] = statistics.mean(values) if values else None
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        rows.append(row)
    return rows


def cost_ratios(cells: Sequence[dict]) -> dict[str, float]:
    """Epoch-time and total-time ratios of each method to ``ce``, from cells measured in the same run."""
    by_method: dict[str, list[dict]] = {}
    for c in cells:
        by_method.setdefault(c["method"], []).append(c)
    if "ce" not in by_method:
        return {}
    ce_epoch = statistics.mean(c["epoch_time_s"] for c in by_method["ce"])
    ce_total = statistics.mean(c["total_time_s"] for c in by_method["ce"])
    out = {}
    for method, group in by_method.items():
        out[f"{method}_epoch_vs_ce"] = statistics.mean(c["epoch_time_s"] for c in group) / ce_epoch
        out[f"{method}_total_vs_ce"] = statistics.mean(c["total_time_s"] for c in group) / ce_total
    return out


def markdown_table(rows: Sequence[dict], methods: Sequence[str], settings: Sequence[str], key: str) -> str:
    """One table: settings as rows, methods as columns, ``mean ± std`` of ``key``; the best mean of a row in bold."""
    index = {(r["setting"], r["method"]): r for r in rows}
    lines = ["| noise | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in settings:
        means = {m: index[(s, m)][key] for m in methods if (s, m) in index and index[(s, m)][key] is not None}
        best = max(means.values()) if means else None
        cells = []
        for m in methods:
            r = index.get((s, m))
            if r is None or r[key] is None:
                cells.append("–")
                continue
            text = f"{r[key]:.2f} ± {r[key + '_std']:.2f}"
            cells.append(f"**{text}**" if r[key] == best else text)
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The markdown report of a result file."""
    rows, methods, settings = result["rows"], result["methods"], result["settings"]
    detectors = [m for m in methods if m in ("knnmix", "cleanlab")]
    noisy_settings = [s for s in settings if s != "none"]  # with clean labels there is nothing to detect
    parts = [
        f"# Benchmark: {result['tier']} ({result['date']})",
        "",
        result["description"],
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: `{result['commit']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, GPU: {result['machine']['gpu']}  ",
        f"Seeds: {', '.join(map(str, result['seeds']))}; mean ± sample std over seeds.",
        "",
        "## Last-epoch test accuracy (%)",
        "",
        markdown_table(rows, methods, settings, "last_test_acc"),
        "",
        "## Test accuracy of the epoch picked by noisy-validation accuracy (%)",
        "",
        markdown_table(rows, methods, settings, "selected_test_acc"),
        "",
        "## Label-correction accuracy of argmax t (%, methods with soft targets)",
        "",
        markdown_table(rows, [m for m in methods if m in ("selc", "knnmix")], settings, "label_acc"),
        "",
        "## Noisy-label detection: precision / recall (%)",
        "",
        "knnmix: samples with clean probability < 0.5 at the last epoch versus samples whose current target is wrong; "
        "cleanlab: the samples its filter removed versus the wrongly labelled ones.",
        "",
        "Precision (flagged samples that are wrongly labelled):",
        "",
        markdown_table(rows, detectors, noisy_settings, "noisy_precision"),
        "",
        "Recall (wrongly labelled samples that are flagged):",
        "",
        markdown_table(rows, detectors, noisy_settings, "noisy_recall"),
        "",
        "## Cost",
        "",
        markdown_table(rows, methods, settings, "epoch_time_s").replace("**", ""),
        "",
        "Wall-clock seconds per training epoch (for cleanlab: its final retraining; its total includes the "
        f"{result['cleanlab_folds']} cross-validation trainings). Ratios to ce measured in this run:",
        "",
        "| method | epoch time / ce | total time / ce |",
        "|---|---|---|",
    ]
    ratios = result["cost_ratios"]
    for m in methods:
        if f"{m}_epoch_vs_ce" in ratios:
            parts.append(f"| {m} | {ratios[m + '_epoch_vs_ce']:.2f} | {ratios[m + '_total_vs_ce']:.2f} |")
    if result.get("sweep_cost"):
        sc = result["sweep_cost"]
        parts += ["", "## Sweep cost with and without early stopping", "", sc["text"]]
    return "\n".join(parts) + "\n"


def plot(result: dict, path: Path) -> None:
    """Accuracy vs noise setting, one line per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows, methods, settings = result["rows"], result["methods"], result["settings"]
    index = {(r["setting"], r["method"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, key, title in (
        (axes[0], "last_test_acc", "last-epoch test accuracy"),
        (axes[1], "selected_test_acc", "test accuracy at the noisy-validation pick"),
    ):
        for m in methods:
            xs, ys, es = [], [], []
            for i, s in enumerate(settings):
                r = index.get((s, m))
                if r is not None and r[key] is not None:
                    xs.append(i)
                    ys.append(r[key])
                    es.append(r[key + "_std"] or 0.0)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=20)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend()
    title = f"{result['tier']} ({result['date']}, commit {result['commit'][:7]}): {result['description']}"
    fig.suptitle(textwrap.fill(title, 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(result: dict, results_dir: Path, write_json: bool = True) -> dict[str, Path]:
    """``<tier>-<date>.json``, ``.md`` and ``.png`` in ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{result['tier']}-{result['date']}"
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    if write_json:
        paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(report(result))
    plot(result, paths["png"])
    return paths


def result_record(tier: Tier, cells: list[dict], command: str, seeds: Sequence[int], settings: Sequence[str],
                  methods: Sequence[str], commit: str | None = None) -> dict:
    """The result of a tier; ``commit`` is the checkout's when the cells started (default: now)."""
    return {
        "tier": tier.name,
        "description": tier.description,
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "commit": commit or git_commit(),
        "machine": machine(),
        "seeds": list(seeds),
        "settings": list(settings),
        "methods": list(methods),
        "cleanlab_folds": tier.cleanlab_folds,
        "cells": cells,
        "rows": aggregate(cells),
        "cost_ratios": cost_ratios(cells),
    }
