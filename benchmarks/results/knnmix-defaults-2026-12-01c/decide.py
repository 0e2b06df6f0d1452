"""Apply rule.txt to the two selection runs beside it (reads last_val_acc only; the training-set diagnostics are
printed for the README, never used to decide). Usage: python decide.py"""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = {"n0": "clean_prob", "n2": "clean_prob+neighbours"}


def cells(name: str) -> list[dict]:
    return json.loads((HERE / f"selection-seeds100-104-{name}.json").read_text())["cells"]


def per_setting(rows: list[dict], key: str) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for c in rows:
        if c.get(key) is not None:
            out.setdefault(c["setting"], []).append(c[key])
    return {s: statistics.mean(v) for s, v in out.items()}


runs = {n: cells(n) for n in VARIANTS}
assert all(len(r) == 30 for r in runs.values()), "each variant needs 6 settings x 5 seeds"
means = {n: statistics.mean(c["last_val_acc"] for c in r) for n, r in runs.items()}
chosen = "n2" if means["n2"] >= means["n0"] else "n0"
print("| noise | " + " | ".join(f"{n} ({v})" for n, v in VARIANTS.items()) + " |\n|---|---|---|")
table = {n: per_setting(r, "last_val_acc") for n, r in runs.items()}
for s in table["n0"]:
    print(f"| {s} | " + " | ".join(f"{table[n][s]:.2f}" for n in VARIANTS) + " |")
print("| mean | " + " | ".join(f"{means[n]:.2f}" for n in VARIANTS) + " |")
print(f"\ndecision: method.correction_gate={VARIANTS[chosen]} ({chosen}; higher mean last-epoch noisy-validation "
      f"accuracy over 30 cells, {means[chosen] - min(means.values()):+.2f})")
for key in ("label_acc", "noisy_precision", "noisy_recall"):
    t = {n: per_setting(r, key) for n, r in runs.items()}
    print(f"\ntraining set, {key} (n0 -> n2): " + "; ".join(f"{s} {t['n0'][s]:.1f} -> {t['n2'][s]:.1f}" for s in t["n0"]))
