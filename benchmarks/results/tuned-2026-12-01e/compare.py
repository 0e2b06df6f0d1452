"""This run (ASHA rung at epoch 15, a7f6038) against the rung-9 run (9717f7a): selections, cells and the targets.

Usage: python benchmarks/results/tuned-2026-12-01e/compare.py   (reads the two committed JSONs; test split read only
for the report, never for a selection: the selections are in the JSONs, made on noisy validation by the tier).
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW = json.loads((HERE / "quick-tuned-2026-12-01.json").read_text())
OLD = json.loads((HERE.parent / "tuned-2026-12-01d" / "quick-tuned-2026-12-01.json").read_text())
PEERS = ("ce", "mixup", "selc", "cleanlab")


def rows(run: dict) -> dict:
    return {(r["setting"], r["method"]): r for r in run["rows"]}


def same_selection(method: str, setting: str) -> str:
    tuned = "ce" if method == "cleanlab" else method
    a = OLD["selections"].get(tuned, {}).get(setting, {}).get("selected_config")
    b = NEW["selections"].get(tuned, {}).get(setting, {}).get("selected_config")
    return "same" if a == b else "other"


new, old = rows(NEW), rows(OLD)
print(f"commit {NEW['commit'][:7]} against {OLD['commit'][:7]}; wall {NEW['wall_s'] / 60:.0f} min against "
      f"{OLD['wall_s'] / 60:.0f} min\n")
print("| noise | method | rung 15 (this run) | rung 9 (9717f7a) | selection |\n|---|---|---|---|---|")
for setting in NEW["settings"]:
    for method in NEW["methods"]:
        n, o = new[setting, method], old[setting, method]
        print(f"| {setting} | {method} | {n['last_test_acc']:.2f} ± {n['last_test_acc_std']:.2f} | "
              f"{o['last_test_acc']:.2f} ± {o['last_test_acc_std']:.2f} | {same_selection(method, setting)} |")

print("\nTargets (last-epoch test accuracy; ahead by more than the larger seed std at the three noisy settings;"
      " nowhere behind the best peer by more than that std; symmetric 0.5 / clean-label ce >= 0.97):")
for setting in NEW["settings"]:
    k = new[setting, "knnmix"]
    best = max(PEERS, key=lambda m: new[setting, m]["last_test_acc"])
    p = new[setting, best]
    gap, std = k["last_test_acc"] - p["last_test_acc"], max(k["last_test_acc_std"], p["last_test_acc_std"])
    if setting == "none":
        verdict = "met" if gap >= -std else "missed"
        print(f"- {setting}: knnmix {k['last_test_acc']:.2f} vs {best} {p['last_test_acc']:.2f}: {gap:+.2f}, "
              f"larger std {std:.2f}: not behind by more than the std -> {verdict}")
    else:
        verdict = "met" if gap > std else "missed"
        print(f"- {setting}: knnmix {k['last_test_acc']:.2f} vs best peer {best} {p['last_test_acc']:.2f}: "
              f"{gap:+.2f}, larger std {std:.2f} -> {verdict}")
ratio = new["symmetric:0.5", "knnmix"]["last_test_acc"] / new["none", "ce"]["last_test_acc"]
print(f"- symmetric 0.5 / clean-label ce: {ratio:.3f} -> {'met' if ratio >= 0.97 else 'missed'}")
