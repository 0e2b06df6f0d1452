"""Does a smoothed rung value let ASHA keep the best configuration? The replay of replay-seed0.json's curves with the
value each rung compares replaced by the running best so far (what a sweep selects on), an EMA (weight 0.5) or the
mean of the last three epochs. Validation curves only (no training, no test number); writes smoothed-seed0.json.

Usage: python benchmarks/results/asha-replay/smoothed.py   (seconds; needs numpy and benchmarks/asha_replay.py)
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # benchmarks/, for asha_replay's replay()
from asha_replay import FACTORS, GRACE, replay  # noqa: E402


def ema(curve: list[float], weight: float = 0.5) -> list[float]:
    out = [curve[0]]
    for v in curve[1:]:
        out.append(weight * out[-1] + (1 - weight) * v)
    return out


SMOOTHINGS = {
    "epoch": lambda c: list(c),
    "running_best": lambda c: np.maximum.accumulate(c).tolist(),
    "ema_0.5": ema,
    "mean_of_3": lambda c: [float(np.mean(c[max(0, i - 2):i + 1])) for i in range(len(c))],
}

source = json.loads((HERE / "replay-seed0.json").read_text())
curves = [t["val"] for t in source["trials"]]
full_epochs, full_best = sum(map(len, curves)), max(map(max, curves))
result = {"source": "replay-seed0.json", "full_trial_epochs": full_epochs, "full_best_val_acc": full_best}
for name, smooth in SMOOTHINGS.items():
    grid = []
    for grace in GRACE:
        for factor in FACTORS:
            spent, best = replay(curves, grace, factor, rung_values=[smooth(c) for c in curves])
            grid.append({"grace_period": grace, "reduction_factor": factor, "epochs_fraction": spent / full_epochs,
                         "best_val_acc": best, "kept_best": best >= full_best})
    kept = min((g for g in grid if g["kept_best"]), key=lambda g: g["epochs_fraction"])
    third = max((g for g in grid if g["epochs_fraction"] <= 1 / 3), key=lambda g: g["best_val_acc"])
    result[name] = {"cheapest_keeping_best": kept, "best_within_a_third": third, "grid": grid}
    print(f"{name:>12}: cheapest placement keeping the best ({full_best:.2f}): grace {kept['grace_period']}, factor "
          f"{kept['reduction_factor']}, {kept['epochs_fraction']:.2f} of the trial epochs; best within 1/3: "
          f"{third['best_val_acc']:.2f} (grace {third['grace_period']}, factor {third['reduction_factor']})")
(HERE / "smoothed-seed0.json").write_text(json.dumps(result, indent=1) + "\n")
