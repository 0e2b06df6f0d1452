"""How well the tuned tier's noisy validation split ranks trained configurations, per noise setting.

Every sweep trial of the tuned tier that ran all 25 epochs has a last-epoch noisy-validation accuracy (what the
sweep selects on) and a last-epoch test accuracy (never used by the sweep). Within one noise setting every trial of
every method trains on the same noisy labels and is judged on the same 800 validation images (tuning seed 100), so
the two can be compared directly: Spearman's rank correlation, and for pairs of trials whose test accuracies differ
by more than a margin, how often validation orders them the same way.

    python benchmarks/results/tuned-2026-12-01e/val_vs_test.py                 # from val_vs_test.json (committed)
    python benchmarks/results/tuned-2026-12-01e/val_vs_test.py COMMIT=SWEEPS_DIR ...  # rebuild it

The JSON was built from this run's sweeps and the 9717f7a run's (same tuning seed, data and split; rung at epoch 9):
a7f6038=RUNS_DIR/quick-tuned/sweeps and 9717f7a=... of each (`benchmarks/run.py --runs-dir`), not committed. A
diagnostic of the protocol only: nothing is selected with it.
"""

import itertools
import json
import sys
from pathlib import Path

from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
SETTINGS = ("none", "symmetric-0.5", "symmetric-0.8", "asymmetric-0.4")


def collect(runs: dict[str, Path]) -> list[dict]:
    """One row per completed trial (deduplicated: the two runs share some configurations and give equal results)."""
    rows, seen = [], set()
    for commit, root in runs.items():
        for metrics in sorted(root.glob("*/*/trials/*/metrics.jsonl")):
            method, setting = metrics.parts[-5], metrics.parts[-4]
            last = json.loads(metrics.read_text().splitlines()[-1])
            if last.get("test_acc") is None:
                continue  # stopped early by ASHA: no test accuracy was ever computed
            row = {"method": method, "setting": setting, "epoch": last["epoch"], "val_acc": last["val_acc"],
                   "test_acc": last["test_acc"], "trial": metrics.parent.name, "commit": commit}
            key = (method, setting, row["val_acc"], row["test_acc"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def summarise(rows: list[dict], margin: float = 2.0) -> None:
    print(f"{'setting':16} {'trials':>6} {'spearman':>9} {'pairs > ' + str(margin) + ' test pts apart: val agrees':>40}")
    for s in SETTINGS:
        r = [x for x in rows if x["setting"] == s]
        rho = spearmanr([x["val_acc"] for x in r], [x["test_acc"] for x in r]).statistic
        far = [(a, b) for a, b in itertools.combinations(r, 2) if abs(a["test_acc"] - b["test_acc"]) > margin]
        agree = sum((a["val_acc"] - b["val_acc"]) * (a["test_acc"] - b["test_acc"]) > 0 for a, b in far)
        ties = sum(a["val_acc"] == b["val_acc"] for a, b in far)
        top = max(x["val_acc"] for x in r)
        near = [x["test_acc"] for x in r if x["val_acc"] >= top - 1.0]  # within 8 of the 800 validation images
        print(f"{s:16} {len(r):>6} {rho:>9.2f} {agree:>5} of {len(far):>4} ({100 * agree / max(len(far), 1):.0f}%), "
              f"{ties} tied on validation; within 1 validation point of the top: {len(near)} trials, test "
              f"{min(near):.2f}-{max(near):.2f} (best test of all: {max(x['test_acc'] for x in r):.2f})")


if __name__ == "__main__":
    data = HERE / "val_vs_test.json"
    if len(sys.argv) > 1:
        rows = collect({label: Path(path) for label, path in (a.split("=", 1) for a in sys.argv[1:])})
        data.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    summarise(json.loads(data.read_text()))
