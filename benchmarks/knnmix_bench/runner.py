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
from knnmix_bench.peers import confident_learning, oracle
from knnmix_bench.tiers import Tier
from knnmix.engine.checkpoint import METRICS, read_metrics
from knnmix.engine.train import train
from knnmix.provenance import git_commit, machine

#: The figures kept per cell (percentages, seconds).
CELL_FIGURES = (
    "last_test_acc",
    "selected_test_acc",
    "best_val_acc",
    "last_val_acc",
    "label_acc",
    "noisy_precision",
    "noisy_recall",
    "epoch_time_s",
    "total_time_s",
)


CELL_FILE = "cell.json"  # a finished cell's figures, in its run folder: what --resume keeps


def cell_job(tier: Tier, method: str, setting: str, seed: int, out: Path, cfg_overrides: Sequence[str] = (),
             selection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything one (method, noise setting, seed) cell needs, as plain data (it runs in a worker process)."""
    if selection is not None:
        from knnmix_bench.tuned import evaluation_config

        cfg = evaluation_config(selection, seed, out, int(tier.base.get("threads", 0)))
    else:
        values = tier.cell_config(method, setting, seed)
        cfg = C.replace(C.from_dict({}), **{**values, "out": str(out), "log_every": 10**6})
    cfg = C.replace(cfg, **dict(map(C.parse_override, cfg_overrides)))  # at once: checks across keys see them all
    return {"method": method, "setting": setting, "seed": seed, "config": C.to_dict(cfg),
            "folds": tier.cleanlab_folds, "selection": selection}


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train one cell into its run folder; return its figures (also written to ``cell.json`` there)."""
    cfg = C.from_dict(job["config"])
    method, start = job["method"], time.perf_counter()
    if method == "cleanlab":
        summary = confident_learning(cfg, folds=job["folds"])
    elif method == "oracle":
        summary = oracle(cfg)
    else:
        summary = train(cfg, overwrite=True, echo=None)
        summary["total_time_s"] = time.perf_counter() - start
    epochs = read_metrics(Path(cfg.out) / METRICS)
    cell = {
        "method": method,
        "setting": job["setting"],
        "seed": job["seed"],
        "last_test_acc": summary["final"]["test_acc"],
        "selected_test_acc": summary["best_val"]["test_acc"],
        "selected_epoch": summary["best_val"]["epoch"],
        "best_val_acc": summary["best_val"]["val_acc"],
        "last_val_acc": summary["final"]["val_acc"],
        "label_acc": summary["final"].get("label_acc"),
        "noisy_precision": summary["final"].get("noisy_precision"),
        "noisy_recall": summary["final"].get("noisy_recall"),
        "epoch_time_s": statistics.mean(r["train_time_s"] for r in epochs),
        "total_time_s": summary["total_time_s"],
        "noise_rate": summary["noise_rate"],
        "train_size": summary["train_size"],
        "extra": summary.get("cleanlab") or summary.get("oracle"),
        "selected_config": (job.get("selection") or {}).get("selected_config"),
        "commit": summary["commit"],
    }
    (Path(cfg.out) / CELL_FILE).write_text(json.dumps(cell, indent=2) + "\n")
    return cell


def run_tier(
    tier: Tier,
    runs_dir: Path,
    *,
    seeds: Sequence[int] | None = None,
    settings: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    cfg_overrides: Sequence[str] = (),
    selections: dict[str, dict[str, dict[str, Any]]] | None = None,
    resume: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """Every cell of the tier, ``tier.parallel`` at a time, each in its own process. With ``resume`` a cell whose
    run folder holds ``cell.json`` (of the same config) is kept, not trained again."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    jobs, cells = [], []
    for seed in sorted({s for st in settings or tier.settings for s in (seeds or tier.seeds_of(st))}):
        for setting in settings or tier.settings:
            if seed not in (seeds or tier.seeds_of(setting)):
                continue
            for method in methods or tier.methods:
                by = tier.tuned_by(method)
                selection = selections[by][setting] if by and selections else None
                out = runs_dir / tier.name / setting.replace(":", "-") / method / f"seed{seed}"
                job = cell_job(tier, method, setting, seed, out, cfg_overrides, selection)
                done = out / CELL_FILE
                if resume and done.exists() and (out / "config.yaml").exists() and _same_config(out, job):
                    cells.append(json.loads(done.read_text()))
                    continue
                jobs.append(job)
    if cells:
        echo(f"{tier.name}: {len(cells)} cells kept from an earlier run, {len(jobs)} to train")

    def say(cell: dict) -> None:
        echo(f"{tier.name} seed {cell['seed']} {cell['setting']:>15} {cell['method']:>8}: last "
             f"{cell['last_test_acc']:.2f}  selected {cell['selected_test_acc']:.2f}  epoch "
             f"{cell['epoch_time_s']:.2f}s  total {cell['total_time_s']:.0f}s")

    if tier.parallel <= 1:
        for job in jobs:
            cells.append(run_cell(job))
            say(cells[-1])
        return cells
    with ProcessPoolExecutor(tier.parallel, mp_context=get_context("spawn")) as pool:
        for future in as_completed([pool.submit(run_cell, job) for job in jobs]):
            cells.append(future.result())
            say(cells[-1])
    order = {(j["method"], j["setting"], j["seed"]): i for i, j in enumerate(jobs)}
    return sorted(cells, key=lambda c: order.get((c["method"], c["setting"], c["seed"]), -1))


def _same_config(out: Path, job: dict[str, Any]) -> bool:
    """Whether the run folder ``out`` holds the run of ``job``'s config: every value the cell asks for, but the ones
    the run resolves (``model.name`` auto, ``noise.seed`` null) only when the cell names them (a
    ``--set model.name=...`` cell kept the small_cnn run of an earlier one), and not ``threads``."""
    saved = C.flatten(C.load(out / "config.yaml"))
    wanted = C.flatten(C.from_dict(job["config"]))
    skip = {"threads"} | {k for k, auto in (("model.name", "auto"), ("noise.seed", None)) if wanted.get(k) == auto}
    return all(saved.get(k) == v for k, v in wanted.items() if k not in skip)


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
        f"Commit: `{result['commit']}`{earlier_commits(result)}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, GPU: {result['machine']['gpu']}  ",
        f"Seeds: {', '.join(map(str, result['seeds']))}; mean ± sample std over seeds.",
        "",
    ]
    sections = [
        ("## Last-epoch test accuracy (%)", methods, settings, "last_test_acc", None),
        ("## Test accuracy of the epoch picked by noisy-validation accuracy (%)", methods, settings,
         "selected_test_acc", None),
        ("## Label-correction accuracy of argmax t (%, methods with soft targets)",
         [m for m in methods if m in ("selc", "knnmix")], settings, "label_acc", None),
        ("## Noisy-label detection: precision / recall (%)", detectors, noisy_settings, "noisy_precision",
         "knnmix: samples with clean probability < 0.5 at the last epoch versus samples whose current target is "
         "wrong; cleanlab: the samples its filter removed versus the wrongly labelled ones.\n\nPrecision (flagged "
         "samples that are wrongly labelled):"),
        ("Recall (wrongly labelled samples that are flagged):", detectors, noisy_settings, "noisy_recall", None),
    ]
    for title, cols, rows_of, key, note in sections:
        parts += [title, ""] + ([note, ""] if note else []) + [markdown_table(rows, cols, rows_of, key), ""]
    parts += [
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
    if result.get("selections"):
        parts += ["", "## Selected configurations (tuned on the noisy validation split, tuning seed "
                  f"{result.get('tune_seed', 100)})", "",
                  "The completed trial with the highest last-epoch noisy-validation accuracy of each method's sweep "
                  "(cleanlab trains with ce's). Sampled values only; everything else is the tier's base.", "",
                  "| method | noise | selected (sampled) values | last val acc (%) | trials (completed) |",
                  "|---|---|---|---|---|"]
        for method, by_setting in result["selections"].items():
            for setting, sel in by_setting.items():
                values = ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else
                                   f"{k.split('.', 1)[-1]}={v}" for k, v in sel["selected_config"].items())
                parts.append(f"| {method} | {setting} | {values} | {sel['val_acc_last']:.2f} | "
                             f"{sel['trials']} ({sel['completed']}) |")
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


def earlier_commits(result: dict) -> str:
    """``" (cells kept from earlier runs: ...)"``: the commits of a resumed result's cells that another checkout
    trained (``""`` when every cell ran at the result's commit)."""
    others = sorted({str(c.get("commit")) for c in result.get("cells", []) if c.get("commit")} - {result["commit"]})
    return f" (cells kept from earlier runs: {', '.join(f'`{c}`' for c in others)})" if others else ""


def write_result(result: dict, results_dir: Path, json_path: Path | None = None) -> dict[str, Path]:
    """``<tier>-<date>.json``, ``.md`` and ``.png`` in ``results_dir`` (a second result of the tier that day:
    ``<tier>-<date>b.json``, ... never over an earlier one); ``json_path``: re-write the report of that result file
    beside it, the JSON left as it is."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = json_path.with_suffix("") if json_path is not None else next(
        s for s in (results_dir / f"{result['tier']}-{result['date']}{x}" for x in ["", *"bcdefghijklmnopqrstuvwxyz"])
        if not s.with_suffix(".json").exists())
    write_json = json_path is None
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": stem.with_suffix(".png")}
    if write_json:
        paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(report(result))
    plot(result, paths["png"])
    return paths


def result_record(tier: Tier, cells: list[dict], command: str, seeds: Sequence[int], settings: Sequence[str],
                  methods: Sequence[str], commit: str | None = None,
                  selections: dict[str, dict[str, dict[str, Any]]] | None = None) -> dict:
    """The result of a tier; ``commit`` is the checkout's when the cells started (default: now); ``selections``:
    a tuned tier's selected configuration per method and setting, with the sweep it came from."""
    return {
        "selections": selections or {},
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
