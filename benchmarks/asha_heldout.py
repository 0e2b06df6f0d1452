"""Does a rung placement keep an equal best on configurations it was not chosen on? (results/asha-heldout*/rule.txt)

``--space knnmix`` (results/asha-heldout/). Stage A: the configuration that grace 1 / factor 3 picks in the replay of
sweep seed 0's curves (results/asha-replay/replay-seed0.json), trained again with training seeds 1-5 and compared with
the full sweep's pick trained again (results/asha-retrain/retrain.json). Stage B, only if stage A passes: the sweeps
benchmark's timed knnmix comparison on sweep seed 1 (24 other configurations) with that placement against no early
stopping, and both picks trained again with seeds 1-5.

``--space mixup`` (results/asha-heldout-mixup/): stage B only, on the mixup arm with Ray's default placement (grace
1 / factor 4, chosen on no data). Validation data only; no test accuracy is read.

    python benchmarks/asha_heldout.py --runs DIR                 # about 40 minutes on 2 cores; resumes stage by stage
    python benchmarks/asha_heldout.py --space mixup --runs DIR   # about 25 minutes
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from knnmix.provenance import machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from asha_replay import EPOCHS, stops  # noqa: E402
from asha_retrain import FRESH, command_line, stats, train_all, written  # noqa: E402
from sweeps import ARMS, asha_vs_full  # noqa: E402

HELD_OUT_SEED = 1
#: space -> (grace period, reduction factor): knnmix's chosen on seed 0's replay (asha-heldout/rule.txt), mixup's
#: Ray Tune's default, which the mixup arm runs with (asha-heldout-mixup/rule.txt)
PLACEMENTS = {"knnmix": (1, 3), "mixup": (1, 4)}
GRACE, FACTOR = PLACEMENTS["knnmix"]


def retrain(runs: Path, label: str, params: dict, arm: str = "knnmix") -> dict:
    """``params`` trained with training seeds 1-5 on the data of ``arm``'s comparison, two runs at a time."""
    space, overrides, _ = ARMS[arm]
    curves = train_all({seed: (space, overrides, params, seed, runs / f"{label}-seed{seed}") for seed in FRESH})
    return {"params": params, "curves": {str(k): v for k, v in curves.items()},
            "best": stats([max(c) for c in curves.values()]), "last": stats([c[-1] for c in curves.values()])}


def replayed_pick() -> tuple[int, dict, list[int], list[list[float]]]:
    """The trial the placement picks in the replay of sweep seed 0 (the sweep's rule: the completed trial with the best
    epoch), its sampled values, the epochs each trial runs and the curves."""
    replay = json.loads((RESULTS / "asha-replay" / "replay-seed0.json").read_text())
    curves = [t["val"] for t in replay["trials"]]
    ran = stops(curves, GRACE, FACTOR)
    pick = max((i for i in range(len(curves)) if ran[i] == EPOCHS), key=lambda i: max(curves[i]))
    return pick, replay["trials"][pick]["params"], ran, curves


def verdict(asha: dict, full: dict) -> dict:
    gap, allowed = full["best"]["mean"] - asha["best"]["mean"], max(asha["best"]["std"], full["best"]["std"])
    return {"gap": gap, "allowed": allowed, "equal_best": gap <= allowed}


def line(name: str, asha: dict, full: dict, v: dict) -> str:
    return (f"{name}: ASHA's pick {asha['best']['mean']:.2f} ± {asha['best']['std']:.2f}, no-early-stopping pick "
            f"{full['best']['mean']:.2f} ± {full['best']['std']:.2f} (best epoch, seeds 1-5); gap {v['gap']:.2f}, "
            f"allowed {v['allowed']:.2f}: equal best {'yes' if v['equal_best'] else 'no'}")


def held_out(runs: Path, arm: str) -> tuple[dict, str]:
    """Stage B: ``arm``'s timed comparison on sweep seed :data:`HELD_OUT_SEED` with its placement against no early
    stopping, each pick trained again with seeds 1-5; the record and its line."""
    grace, factor = PLACEMENTS[arm]
    saved = runs / "stage-b.json"
    if not saved.exists():
        placement = [f"sweep.asha.grace_period={grace}", f"sweep.asha.reduction_factor={factor}"]
        saved.write_text(json.dumps(asha_vs_full(runs / "stage-b", arm, [f"sweep.seed={HELD_OUT_SEED}", *placement])))
    cmp = json.loads(saved.read_text())
    assert cmp["same_configs"], "the two arms drew different configurations"
    epochs = ARMS[arm][2]

    def best_completed(record: dict) -> dict:  # the sweep's rule: the completed trial with the best epoch
        done = [t for t in record["per_trial"] if t["epochs"] == epochs]
        return max(done, key=lambda t: t["best_val_acc"])["params"]

    a = retrain(runs, "stage-b-asha", best_completed(cmp["asha"]), arm)
    f = retrain(runs, "stage-b-full", best_completed(cmp["no_early_stopping"]), arm)
    v = verdict(a, f)
    met = v["equal_best"] and cmp["wall_ratio"] <= 1 / 3
    record = {"sweep_seed": HELD_OUT_SEED, "comparison": cmp, "asha": a, "full": f, **v,
              "wall_ratio": cmp["wall_ratio"], "target_met": met}
    return record, line(f"stage B (sweep seed {HELD_OUT_SEED}, real sweeps: wall {cmp['asha']['wall_s']:.0f} s vs "
                        f"{cmp['no_early_stopping']['wall_s']:.0f} s, {cmp['wall_ratio']:.2f}x; single-run bests "
                        f"{cmp['asha']['best_val_acc']:.2f} vs {cmp['no_early_stopping']['best_val_acc']:.2f})", a, f,
                        v) + f"; target {'met' if met else 'missed'}"


def main(argv: list[str] | None = None) -> int:
    args, typed, start, runs, commit = command_line(
        argv, __doc__, lambda a: RESULTS / ("asha-heldout" if a.space == "knnmix" else "asha-heldout-mixup") /
        "heldout.json", lambda p: p.add_argument("--space", choices=sorted(PLACEMENTS), default="knnmix"))
    runs.mkdir(parents=True, exist_ok=True)
    grace, factor = PLACEMENTS[args.space]
    result = {"command": shlex.join(["python", "benchmarks/asha_heldout.py", *typed]), "commit": commit,
              "machine": machine(), "date": time.strftime("%Y-%m-%d"), "space": args.space, "grace_period": grace,
              "reduction_factor": factor}
    lines = []
    stage_a_passed = True
    if args.space == "knnmix":  # Stage A: the placement's pick on the sweep it was chosen on
        pick, params, ran, curves = replayed_pick()
        a = retrain(runs, "stage-a-asha", params)
        full = json.loads((RESULTS / "asha-retrain" / "retrain.json").read_text())["spaces"]["knnmix"]["full"]
        f = {"params": full["params"], "best": full["best"], "last": full["last"]}  # seeds 1-5 of the same data
        v = verdict(a, f)
        result["stage_a"] = {"sweep_seed": 0, "trial_epochs": sum(ran),
                             "epochs_fraction": sum(ran) / sum(map(len, curves)), "asha_trial": pick, "asha": a,
                             "full": f, **v}
        lines.append(line(f"stage A (sweep seed 0, replayed: {sum(ran)} trial epochs)", a, f, v))
        stage_a_passed = v["equal_best"]
    if stage_a_passed:  # Stage B: a real timed comparison on configurations the placement was not chosen on
        result["stage_b"], stage_b = held_out(runs, args.space)
        lines.append(stage_b)
    else:
        lines.append("stage B not run: the placement does not keep an equal best on the sweep it was chosen on")
    result["wall_s"] = time.time() - start
    return written(args.out, result, lines)


if __name__ == "__main__":
    raise SystemExit(main())
