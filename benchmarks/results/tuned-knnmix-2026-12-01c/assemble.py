"""How quick-tuned-combined-2026-12-01.* here were assembled:

    python benchmarks/results/tuned-knnmix-2026-12-01c/assemble.py

The peers' selections and cells (ce, mixup, selc, cleanlab) of the tuned tier at def2a2d
(../gate-2026-12-01/quick-tuned-2026-12-01.json, their code unchanged since e35d460, an earlier machine) with knnmix's
selections and cells of knnmix-quick-tuned-2026-12-01.json here (knnmix only, re-run with the current default gate
as its sweep's start point, this session's machine). Every cell keeps its own commit; the cost ratios stay empty (two
runs' timings on two machines).
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2] / "src"), str(HERE.parents[2] / "benchmarks")]
from knnmix_bench import runner  # noqa: E402

peers = json.loads((HERE.parent / "gate-2026-12-01" / "quick-tuned-2026-12-01.json").read_text())
knn = json.loads((HERE / "knnmix-quick-tuned-2026-12-01.json").read_text())
order = {m: i for i, m in enumerate(peers["methods"])}
cells = sorted([c for c in peers["cells"] if c["method"] != "knnmix"] + knn["cells"],
               key=lambda c: (peers["settings"].index(c["setting"]), order[c["method"]], c["seed"]))
result = dict(peers, cells=cells, rows=runner.aggregate(cells), cost_ratios={},
              selections={**peers["selections"], "knnmix": knn["selections"]["knnmix"]},
              commit=f"{peers['commit'][:7]} (ce, mixup, selc, cleanlab) + {knn['commit'][:7]} (knnmix)",
              command=peers["command"] + " ; knnmix: " + knn["command"], wall_s=None)
with tempfile.TemporaryDirectory() as tmp:  # write_result names its files <tier>-<date>
    stem = f"{result['tier']}-{result['date']}"
    (Path(tmp) / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    runner.write_result(result, Path(tmp), write_json=False)
    for ext in ("json", "md", "png"):
        shutil.copy(Path(tmp) / f"{stem}.{ext}", HERE / f"quick-tuned-combined-2026-12-01.{ext}")
