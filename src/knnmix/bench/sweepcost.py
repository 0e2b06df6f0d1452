"""The cost of a sweep with ASHA early stopping versus the same sweep without, at an equal best validation accuracy.

Both sweeps run the same space with the same sampler seed (so the random start-up draws are the same configs); the
second sets ASHA's grace period to the whole run, so no trial stops early. The cost of each is counted in trial
epochs and in wall-clock seconds up to the first epoch (in trial order) whose noisy-validation accuracy reaches the
lower of the two sweeps' best values -- the accuracy both sweeps attain.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from knnmix.scale import sweep as S
from knnmix.scale.tracking import Store


def _cost_to(trials: list[S.TrialRecord], target: float) -> tuple[int, float]:
    """(trial epochs, training seconds) spent, in trial order, until an epoch reaches ``target`` val accuracy."""
    epochs, seconds = 0, 0.0
    for t in trials:
        for r in t.records:
            epochs += 1
            seconds += float(r.get("train_time_s", 0.0)) + float(r.get("eval_time_s", 0.0))
            if r.get("val_acc") is not None and r["val_acc"] >= target:
                return epochs, seconds
    return epochs, seconds


def run_sweep_cost(space_file: str, overrides: list[str], out: Path, echo=print) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for label in ("asha", "no_early_stopping"):
        extra = list(overrides)
        if label == "no_early_stopping":
            base = S.load_space(space_file, overrides)
            epochs = base.setting_config(base.noise[0]).epochs
            extra.append(f"sweep.asha.grace_period={epochs}")
        space = S.load_space(space_file, extra)
        folder = out / label
        if folder.exists():  # the benchmark's own scratch folder: each measurement starts afresh
            shutil.rmtree(folder)
        store = Store.from_uri(f"sqlite:///{folder / 'mlflow.db'}")
        start = time.perf_counter()
        S.run_sweep(space, folder, store=store, echo=None)
        wall = time.perf_counter() - start
        setting = space.noise[0]
        trials = S.collect_trials(S.SweepFolder(folder.absolute()), setting, list(space.params))
        vals = [r["val_acc"] for t in trials for r in t.records if r.get("val_acc") is not None]
        runs[label] = {
            "wall_s": wall,
            "trials": len(trials),
            "stopped_early": sum(t.stopped_early for t in trials),
            "trial_epochs": sum(t.epochs_run for t in trials),
            "best_val_acc": max(vals),
            "_trials": trials,
        }
        echo(f"sweep cost, {label}: {runs[label]['trial_epochs']} trial epochs, {wall:.0f} s, "
             f"best val {runs[label]['best_val_acc']:.2f}")
    target = min(r["best_val_acc"] for r in runs.values())
    for r in runs.values():
        r["epochs_to_target"], r["train_s_to_target"] = _cost_to(r.pop("_trials"), target)
    a, b = runs["asha"], runs["no_early_stopping"]
    result = {
        "space": space_file,
        "overrides": overrides,
        "target_val_acc": target,
        "runs": runs,
        "epochs_ratio_at_target": a["epochs_to_target"] / b["epochs_to_target"],
        "train_time_ratio_at_target": a["train_s_to_target"] / max(b["train_s_to_target"], 1e-9),
        "total_epochs_ratio": a["trial_epochs"] / b["trial_epochs"],
        "wall_ratio": a["wall_s"] / b["wall_s"],
    }
    result["text"] = (
        f"Space `{space_file}` with `{' '.join(overrides)}`: {a['trials']} trials each, same sampler seed. "
        f"ASHA stopped {a['stopped_early']} of {a['trials']} trials early.\n\n"
        "| sweep | trial epochs | wall clock (s) | best noisy-val acc (%) | trial epochs to reach "
        f"{target:.2f}% | training s to reach it |\n|---|---|---|---|---|---|\n"
        + "\n".join(
            f"| {name.replace('_', ' ')} | {r['trial_epochs']} | {r['wall_s']:.0f} | {r['best_val_acc']:.2f} | "
            f"{r['epochs_to_target']} | {r['train_s_to_target']:.1f} |"
            for name, r in runs.items()
        )
        + f"\n\nASHA / no early stopping: {result['total_epochs_ratio']:.2f}x the trial epochs, "
        f"{result['wall_ratio']:.2f}x the wall clock overall; at the equal best validation accuracy "
        f"{target:.2f}%: {result['epochs_ratio_at_target']:.2f}x the trial epochs and "
        f"{result['train_time_ratio_at_target']:.2f}x the training time. Wall clock includes each trial's Ray Train "
        "start-up (about 20 s on this machine), which early stopping does not save."
    )
    return result
