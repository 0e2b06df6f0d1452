"""How quick-fixed-combined-2026-12-01.* and spot-check-2026-12-01.json here were assembled:

    python benchmarks/results/gate-2026-12-01/assemble.py combined
    python benchmarks/results/gate-2026-12-01/assemble.py spot SPOT.json SPOT_E35.json

combined: the peers' and the oracle's cells of ../quick-2026-12-01.json (e35d460) with knnmix's cells of
knnmix-fixed-quick-2026-12-01.json (def2a2d); every cell keeps its commit, the cost ratios stay empty (two runs'
timings). spot: SPOT.json from `benchmarks/run.py --tier quick --methods ce mixup selc knnmix cleanlab oracle
--settings symmetric:0.5 --seeds 0` (at 9044444) and SPOT_E35.json from `--methods ce` at e35d460, both on the
later machine, set against the committed cells.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2] / "src"), str(HERE.parents[2] / "benchmarks")]
from knnmix_bench import runner  # noqa: E402

peers = json.loads((HERE.parent / "quick-2026-12-01.json").read_text())
knn = json.loads((HERE / "knnmix-fixed-quick-2026-12-01.json").read_text())
if sys.argv[1] == "combined":
    order = {m: i for i, m in enumerate(peers["methods"])}
    cells = sorted([c for c in peers["cells"] if c["method"] != "knnmix"] + knn["cells"],
                   key=lambda c: (peers["settings"].index(c["setting"]), order[c["method"]], c["seed"]))
    result = dict(peers, cells=cells, rows=runner.aggregate(cells), cost_ratios={},
                  commit=f"{peers['commit'][:7]} (ce, mixup, selc, cleanlab, oracle) + {knn['commit'][:7]} (knnmix)",
                  command=peers["command"] + " ; knnmix: " + knn["command"])
    with tempfile.TemporaryDirectory() as tmp:  # write_result names its files <tier>-<date>
        (Path(tmp) / "quick-2026-12-01.json").write_text(json.dumps(result, indent=2) + "\n")
        runner.write_result(result, Path(tmp), write_json=False)
        for ext in ("json", "md", "png"):
            shutil.copy(Path(tmp) / f"quick-2026-12-01.{ext}", HERE / f"quick-fixed-combined-2026-12-01.{ext}")
else:
    spot, e35 = (json.loads(Path(p).read_text()) for p in sys.argv[2:4])
    old = {c["method"]: c for c in peers["cells"] + knn["cells"] if c["setting"] == "symmetric:0.5" and c["seed"] == 0}
    keys = ("last_test_acc", "selected_test_acc", "last_val_acc", "best_val_acc")
    rows = [{"method": c["method"], "setting": c["setting"], "seed": c["seed"], "commit_here": c["commit"][:7],
             **{k + "_here": c[k] for k in keys}, "commit_committed": old[c["method"]]["commit"][:7],
             **{k + "_committed": old[c["method"]][k] for k in keys}} for c in spot["cells"] + e35["cells"]]
    out = {"what": "Spot check of the fixed quick tier on the 2026-12-01 (second) session machine: every method's "
           "symmetric:0.5 seed-0 cell at 9044444, and ce at e35d460, against the committed cells (previous machine).",
           "commands": [spot["command"], e35["command"]], "machine_here": spot["machine"], "rows": rows}
    (HERE / "spot-check-2026-12-01.json").write_text(json.dumps(out, indent=2) + "\n")
