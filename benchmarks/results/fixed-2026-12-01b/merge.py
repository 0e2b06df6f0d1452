"""How quick-2026-12-01.json here was assembled from the two invocations that trained its cells (both at 834e41e):

    python benchmarks/results/fixed-2026-12-01b/merge.py PEERS.json KNNMIX.json KNNMIX_CLEAN_PROB.json

PEERS.json: `benchmarks/run.py --tier quick --resume --methods ce mixup selc cleanlab oracle`; KNNMIX.json:
`benchmarks/run.py --tier quick --resume --methods knnmix`; KNNMIX_CLEAN_PROB.json: the same with
`--set method.correction_gate=clean_prob`. Writes quick-2026-12-01.{json,md,png} and
knnmix-clean_prob-quick-2026-12-01.json beside this file.
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[2] / "src"), str(HERE.parents[2] / "benchmarks")]
from knnmix_bench import runner  # noqa: E402

peers, knn, n0 = (json.loads(Path(p).read_text()) for p in sys.argv[1:4])
assert peers["commit"] == knn["commit"] == n0["commit"], (peers["commit"], knn["commit"], n0["commit"])
methods = ["ce", "mixup", "selc", "knnmix", "cleanlab", "oracle"]
cells = sorted(peers["cells"] + knn["cells"],
               key=lambda c: (peers["settings"].index(c["setting"]), methods.index(c["method"]), c["seed"]))
result = dict(peers, methods=methods, cells=cells, rows=runner.aggregate(cells), cost_ratios=runner.cost_ratios(cells),
              command=peers["command"] + " ; " + knn["command"], wall_s=peers.get("wall_s", 0) + knn.get("wall_s", 0))
(HERE / "quick-2026-12-01.json").write_text(json.dumps(result, indent=2) + "\n")
runner.write_result(result, HERE, write_json=False)
(HERE / "knnmix-clean_prob-quick-2026-12-01.json").write_text(json.dumps(n0, indent=2) + "\n")
