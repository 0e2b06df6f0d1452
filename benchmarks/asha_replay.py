"""Which ASHA rung placements keep the best configuration of a knnmix sweep (benchmarks/results/asha-replay/rule.txt).

Runs the no-early-stopping arm of ``benchmarks/sweeps.py``'s knnmix comparison (search_spaces/fashion-mnist.yaml, 24
random configurations, 20 epochs, symmetric 0.5) and keeps every trial's per-epoch noisy-validation accuracy. Then it
replays Ray Tune's asynchronous successive halving over those curves for a grid of grace periods and reduction
factors: the trial epochs each placement would have spent, and the best validation accuracy it would have seen. A
diagnostic on validation data only; a placement the replay favours still needs a real ASHA run on fresh trials.

    python benchmarks/asha_replay.py --runs DIR      # about 22 minutes on 2 cores; resumes; writes the JSON
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from knnmix import spaces as SP
from knnmix.provenance import git_commit, machine
from knnmix import sweep_folder as SF
from knnmix.scale import sweep as S
from knnmix.tracking import Store

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sweeps import FASHION  # noqa: E402  (the same overrides as the sweeps benchmark's knnmix arm)

EPOCHS = 20  # FASHION's trial length
GRACE = range(1, 16)
FACTORS = (2, 3, 4, 6, 8)


def arm(runs: Path, seed: int, grace: int = EPOCHS, factor: int = 4) -> list[dict]:
    """Every trial of a real sweep of the 24 configurations (default: no early stopping), in creation order: its
    sampled values and the val curve of the epochs it ran."""
    label = "no-early-stopping" if grace == EPOCHS else f"asha-{grace}-{factor}"
    out = (runs / f"{label}-seed{seed}").absolute()
    space = SP.load_space("fashion-mnist", FASHION + [f"sweep.asha.grace_period={grace}",
                                                      f"sweep.asha.reduction_factor={factor}", f"sweep.seed={seed}"])
    if not (out / "sweep_summary.json").exists():
        S.run_sweep(space, out, store=Store.from_uri(f"sqlite:///{runs.absolute() / 'mlflow.db'}"), echo=print,
                    resume=(out / "sweep_state.json").exists())
    trials = S.collect_trials(SF.SweepFolder(out))
    return [{"trial_id": t.trial_id, "params": dict(t.params), "val": [r["val_acc"] for r in t.records]}
            for t in trials]


def stops(curves: list[list[float]], grace: int, factor: int, max_t: int = EPOCHS,
          rung_values: list[list[float]] | None = None) -> list[int]:
    """Ray's ASHA (one bracket, ``_Bracket``'s rungs and cutoff) over per-epoch curves taken in creation order: the
    epochs each trial runs.

    Rungs at ``grace * factor**k`` for k < int(log(max_t / grace) / log(factor) + 1); at a rung a trial stops when its
    value is below the (1 - 1/factor) percentile of the values other trials recorded there before it. The values
    compared are ``rung_values`` (e.g. each curve's running best; default: the curves).
    """
    rungs = [grace * factor**k for k in range(int(np.log(max_t / grace) / np.log(factor) + 1))]
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    epochs = []
    for curve, values in zip(curves, rung_values or curves):
        ran = len(curve)
        for r in rungs:
            if r > len(curve):
                break
            value, seen = values[r - 1], recorded[r]
            stop = bool(seen) and value < np.nanpercentile(seen, (1 - 1 / factor) * 100)
            seen.append(value)
            if stop:
                ran = r
                break
        epochs.append(ran)
    return epochs


def replay(curves: list[list[float]], grace: int, factor: int, max_t: int = EPOCHS,
           rung_values: list[list[float]] | None = None) -> tuple[int, float]:
    """The trial epochs :func:`stops` spends over ``curves`` and the best value of ``curves`` seen in them."""
    ran = stops(curves, grace, factor, max_t, rung_values)
    return sum(ran), float(max(max(c[:n]) for c, n in zip(curves, ran)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="folder for the sweep (kept, so a stopped run resumes)")
    p.add_argument("--seed", type=int, default=0, help="the sweep's seed (0: the configurations of sweeps.py)")
    p.add_argument("--out", help="result JSON (default benchmarks/results/asha-replay/replay-seed<seed>.json)")
    p.add_argument("--check", nargs=2, type=int, metavar=("GRACE", "FACTOR"), default=(1, 4),
                   help="also run this placement for real, to compare with its replay (default: Ray's 1 and 4)")
    args = p.parse_args(argv)
    typed = sys.argv[1:] if argv is None else list(argv)  # (main([]) is no command line of its own)
    out = Path(args.out) if args.out else HERE / "results" / "asha-replay" / f"replay-seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)  # (now, not after the sweeps)
    start = time.time()
    trials = arm(Path(args.runs), args.seed)
    curves = [t["val"] for t in trials]
    full_epochs, full_best = sum(map(len, curves)), max(map(max, curves))
    grid = []
    for grace in GRACE:
        for factor in FACTORS:
            spent, best = replay(curves, grace, factor)
            grid.append({"grace_period": grace, "reduction_factor": factor, "trial_epochs": spent,
                         "epochs_fraction": spent / full_epochs, "best_val_acc": best, "kept_best": best >= full_best})
    meets = [g for g in grid if g["kept_best"] and g["epochs_fraction"] <= 1 / 3]
    real = arm(Path(args.runs), args.seed, *args.check)  # the replay's fidelity: the same placement run by Ray
    spent, best = replay(curves, *args.check)
    ran = [len(t["val"]) for t in real]
    check = {"grace_period": args.check[0], "reduction_factor": args.check[1],
             "real": {"trial_epochs": sum(ran), "best_val_acc": max(max(t["val"]) for t in real), "epochs": ran},
             "replay": {"trial_epochs": spent, "best_val_acc": best}}
    result = {"command": shlex.join(["python", "benchmarks/asha_replay.py", *typed]),
              "commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d"), "seed": args.seed,
              "wall_s": time.time() - start,
              "full_trial_epochs": full_epochs, "full_best_val_acc": full_best, "grid": grid,
              "kept_best_within_a_third": meets, "check": check, "trials": trials}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"no early stopping: {len(curves)} trials, {full_epochs} trial epochs, best val {full_best:.2f}%")
    print("grace factor  epochs  fraction  best   kept")
    for g in grid:
        print(f"{g['grace_period']:5d} {g['reduction_factor']:6d} {g['trial_epochs']:7d} {g['epochs_fraction']:9.2f} "
              f"{g['best_val_acc']:6.2f} {'yes' if g['kept_best'] else 'no'}")
    print(f"placements that keep the best within 1/3 of the trial epochs: {len(meets)}")
    print(f"check, grace {args.check[0]} factor {args.check[1]}: Ray {sum(ran)} trial epochs, best "
          f"{check['real']['best_val_acc']:.2f}; replay {spent}, best {best:.2f}; written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
