"""Every cell of this run against the same cell of the earlier fixed-tier runs (peers at 834e41e, knnmix at d30b657).

    python benchmarks/results/fixed-2026-12-01e/same_cells.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("last_test_acc", "selected_test_acc", "best_val_acc", "last_val_acc", "label_acc", "noisy_precision",
          "noisy_recall")


def cells(path: Path) -> dict:
    return {(c["method"], c["setting"], c["seed"]): c for c in json.loads(path.read_text())["cells"]}


new = cells(HERE / "quick-2026-12-01.json")
earlier = {k: c for k, c in cells(HERE.parent / "fixed-2026-12-01b" / "quick-2026-12-01.json").items()
           if k[0] != "knnmix"}
earlier.update(cells(HERE.parent / "fixed-knnmix-2026-12-01c" / "knnmix-quick-2026-12-01.json"))
moved = {k: [(f, earlier[k][f], c[f]) for f in FIELDS if earlier[k][f] != c[f]] for k, c in new.items() if k in earlier}
moved = {k: v for k, v in moved.items() if v}
print(f"{len(new)} cells; {len(set(new) & set(earlier))} in the earlier runs; identical in every accuracy and "
      f"diagnostic: {len(set(new) & set(earlier)) - len(moved)}")
for k, v in moved.items():
    print(k, v)
