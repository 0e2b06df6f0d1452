"""What a sweep costs, measured side by side in one run (issue 10's targets).

1. The smoke sweep (``knnmix sweep smoke``: digits, 2 noise settings x 3 in-process trials): wall clock, and each
   trial's overhead, i.e. the seconds it held its CPU (from Tune's start to its last report) minus the seconds its
   epochs trained and evaluated (from its ``metrics.jsonl``).
2. ASHA against the same sweep without early stopping, on Fashion-MNIST, where trials are long enough to matter: the
   shipped ``search_spaces/fashion-mnist.yaml`` with 24 in-process trials of 20 epochs at one noise setting, once with
   Ray Tune's default ASHA (grace period 1, reduction factor 4) and once with the grace period set to the whole run.
   Every trial is one of the sampler's seeded random start-up draws, so both arms train the same 24 configurations
   in the same order and differ in early stopping only (with TPE, the pruned arm's short trials would steer its later
   draws elsewhere, and the comparison would measure two different searches). Compared by wall clock and at an equal
   best noisy-validation accuracy: the wall clock each spent until a trial first reached the lower of the two best
   values, and whether ASHA kept the configuration that ended best without early stopping.
   The same comparison on the quick-tuned tier's mixup space (``bench-quick-mixup``: mixup alpha and lr, knobs that
   act from the first epoch, unlike knnmix's, which act only after its warm-up), 24 trials of 25 epochs.

    python benchmarks/sweeps.py                 # about 50 minutes on 2 cores; writes benchmarks/results/sweeps-<date>.json
    python benchmarks/sweeps.py --asha mixup    # the smoke sweep and the mixup space's comparison only
    python benchmarks/sweeps.py --quick         # a smoke version (CI): the smoke sweep only, 1 trial per setting
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from knnmix.provenance import git_commit, machine
from knnmix import spaces as SP
from knnmix import sweep_folder as SF
from knnmix.scale import sweep as S
from knnmix.tracking import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# ASHA with Ray Tune's own defaults (grace period 1 epoch, reduction factor 4): rungs at epochs 1, 4 and 16.
RANDOM_24 = ["sweep.noise=[symmetric:0.5]", "sweep.trials=24", "sweep.startup_trials=24", "sweep.start_with=[]",
             "distributed.workers=0", "distributed.cpus_per_worker=1", "data.train_subset=4000",
             "data.val_fraction=0.2", "data.augment=false", "sweep.asha.grace_period=1",
             "sweep.asha.reduction_factor=4", "log_every=100"]
FASHION = RANDOM_24 + ["sweep.params.method.correction_start.high=15", "epochs=20"]
# The quick-tuned tier's mixup space (alpha and lr, which act from the first epoch) on the quick tier's data
MIXUP = RANDOM_24 + ["data.name=fashion-mnist", "model.name=small_cnn", "optim.batch_size=128", "epochs=25",
                     "test_every=0"]
ARMS = {"knnmix": ("fashion-mnist", FASHION, 20), "mixup": ("bench-quick-mixup", MIXUP, 25)}


def timed_sweep(space: SP.SearchSpace, out: Path) -> dict:
    """Run a sweep into ``out`` (afresh); its wall clock and every trial's records and Tune times."""
    from ray.tune import ExperimentAnalysis

    if out.exists():
        shutil.rmtree(out)
    start = time.time()  # Tune's trial start times are wall-clock (time.time()) too
    summary = S.run_sweep(space, out, store=Store.from_uri(f"sqlite:///{out.parent / (out.name + '.db')}"), echo=None)
    wall = time.time() - start
    tune_trials = {t.trial_id: t for t in ExperimentAnalysis(str(out / SF.TUNE_DIR)).trials}
    trials = []
    for t in S.collect_trials(SF.SweepFolder(out.absolute())):
        meta = tune_trials[t.trial_id].run_metadata
        worked = sum(r["train_time_s"] + r["eval_time_s"] for r in t.records)
        held = (meta.last_result_time or 0) - (meta.start_time or 0)
        trials.append({"trial_id": t.trial_id, "setting": t.slug, "params": dict(t.params), "epochs": t.epochs_run,
                       "completed": t.completed, "best_val_acc": (t.best() or {}).get("val_acc"), "train_s": worked,
                       "held_s": held, "overhead_s": held - worked,
                       "first_result_after_s": (meta.start_time or 0) - start, "records": t.records})
    return {"wall_s": wall, "trials": trials, "best": {s["noise"]: s["best"] for s in summary["settings"]}}


def smoke(out: Path, quick: bool) -> dict:
    space = SP.load_space("smoke", ["sweep.trials=1"] if quick else [])
    run = timed_sweep(space, out / "smoke")
    overheads = [t["overhead_s"] for t in run["trials"]]
    return {"space": "smoke", "trials": len(run["trials"]), "wall_s": run["wall_s"],
            "train_s": sum(t["train_s"] for t in run["trials"]), "overhead_s_mean": statistics.mean(overheads),
            "overhead_s_max": max(overheads), "per_trial": [{k: v for k, v in t.items() if k != "records"}
                                                            for t in run["trials"]]}


def asha_vs_full(out: Path, arm: str = "knnmix", extra: list[str] | None = None) -> dict:
    """The two arms of ``ARMS[arm]``, each with the overrides ``extra`` too (e.g. another sweep seed or placement)."""
    name, overrides, epochs = ARMS[arm]
    overrides = overrides + list(extra or [])
    runs = {}
    for label, stopping in (("asha", []), ("no_early_stopping", [f"sweep.asha.grace_period={epochs}"])):
        space = SP.load_space(name, overrides + stopping)
        runs[label] = timed_sweep(space, out / arm / label)
    best = {k: max(t["best_val_acc"] for t in v["trials"] if t["best_val_acc"] is not None) for k, v in runs.items()}
    target = min(best.values())
    result = {"space": name, "overrides": overrides, "target_val_acc": target}
    for label, run in runs.items():
        # the moment (seconds after the sweep started) a trial first reported an epoch at or above the target
        reached = [t["first_result_after_s"] + sum(r["train_time_s"] + r["eval_time_s"] for r in t["records"][:i + 1])
                   for t in run["trials"] for i, r in enumerate(t["records"])
                   if r.get("val_acc") is not None and r["val_acc"] >= target]
        result[label] = {"wall_s": run["wall_s"], "best_val_acc": best[label], "seconds_to_target": min(reached),
                         "trial_epochs": sum(t["epochs"] for t in run["trials"]),
                         "stopped_early": sum(not t["completed"] for t in run["trials"]),
                         # which configurations each arm stopped, and where its best came from
                         "per_trial": [{k: t[k] for k in ("params", "epochs", "best_val_acc")} for t in run["trials"]]}
    a, b = result["asha"], result["no_early_stopping"]
    configs = [[t["params"] for t in arm["per_trial"]] for arm in (a, b)]
    result["same_configs"] = configs[0] == configs[1]  # the design's premise: early stopping is the only difference
    full_best = max(b["per_trial"], key=lambda t: t["best_val_acc"] or -1.0)["params"]
    full_epochs = max(t["epochs"] for t in b["per_trial"])
    result["asha_kept_full_best"] = any(t["params"] == full_best and t["epochs"] == full_epochs for t in a["per_trial"])
    result["wall_ratio"] = a["wall_s"] / b["wall_s"]
    result["to_target_ratio"] = a["seconds_to_target"] / b["seconds_to_target"]
    result["epochs_ratio"] = a["trial_epochs"] / b["trial_epochs"]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the smoke sweep only, one trial per setting")
    p.add_argument("--out", help="result JSON (default benchmarks/results/sweeps-<date>.json)")
    p.add_argument("--asha", nargs="*", choices=sorted(ARMS), default=sorted(ARMS),
                   help="the spaces of the ASHA comparison (default: both)")
    args = p.parse_args(argv)
    typed = sys.argv[1:] if argv is None else list(argv)  # (main([]) is no command line of its own)
    work = Path(tempfile.mkdtemp(prefix="knnmix-sweeps-"))
    try:
        result = {"command": shlex.join(["python", "benchmarks/sweeps.py", *typed]),
                  "commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                  "smoke": smoke(work, args.quick)}
        s = result["smoke"]
        print(f"smoke sweep: {s['trials']} trials in {s['wall_s']:.0f} s wall clock (target <= 90 s); per-trial "
              f"overhead {s['overhead_s_mean']:.2f} s mean, {s['overhead_s_max']:.2f} s max (target <= 2 s)", flush=True)
        for arm in [] if args.quick else args.asha:
            key = "asha_vs_full" if arm == "knnmix" else f"asha_vs_full_{arm}"  # the knnmix key of earlier results
            r = result[key] = asha_vs_full(work, arm)
            print(f"ASHA vs no early stopping ({r['space']}, Fashion-MNIST, symmetric 0.5, 24 trials of "
                  f"{ARMS[arm][2]} epochs): wall "
                  f"{r['asha']['wall_s']:.0f} s vs {r['no_early_stopping']['wall_s']:.0f} s ({r['wall_ratio']:.2f}x); "
                  f"to the equal best val {r['target_val_acc']:.2f}%: {r['asha']['seconds_to_target']:.0f} s vs "
                  f"{r['no_early_stopping']['seconds_to_target']:.0f} s ({r['to_target_ratio']:.2f}x, target <= 0.33); "
                  f"trial epochs {r['epochs_ratio']:.2f}x; same configurations in both arms: {r['same_configs']}; "
                  f"ASHA ran the other arm's best configuration to the end: {r['asha_kept_full_best']}", flush=True)
        out = Path(args.out) if args.out else HERE / "results" / f"sweeps-{result['date']}.json"
        if args.out or not args.quick:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(f"written: {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
