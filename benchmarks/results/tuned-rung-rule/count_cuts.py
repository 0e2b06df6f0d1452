"""Count the trials a tuned-tier sweep's ASHA stopped before their correction start (the figures in rule.txt).

Usage: PYTHONPATH=src python benchmarks/results/tuned-rung-rule/count_cuts.py RUNS_DIR/quick-tuned/sweeps [RUNG]
(the sweep folders of `benchmarks/run.py --tier quick-tuned --runs-dir RUNS_DIR`; they are not committed: at 9717f7a
they were /work/bench-runs/tuned-all/quick-tuned/sweeps). Validation-side data only: trial configs and stop epochs.
"""

import sys
from pathlib import Path

from knnmix import sweep_folder as SF
from knnmix.scale import sweep as S

root, rung = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 9
for method in ("selc", "knnmix"):
    trials = S.collect_trials(SF.SweepFolder((root / method).absolute()))
    cut = [t for t in trials if t.stopped_early]
    before = sum(t.params["method.correction_start"] > rung for t in cut)
    print(f"{method}: {len(cut)} trials stopped early, {before} of them before their correction start (> epoch {rung})")
