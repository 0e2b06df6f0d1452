"""Is ASHA's pick worse than the no-early-stopping pick, or was one run lucky? (results/asha-retrain/rule.txt)

A sweep selects the trial with the best noisy-validation epoch: the maximum, over every trial and epoch, of a value
that swings by points from one epoch to the next. This trains the configuration each arm of the two recorded ASHA
comparisons picked (the knnmix space: results/asha-replay/replay-seed0.json; the mixup space:
results/sweeps-2026-12-01b.json) again on the same data with training seeds 0-5, and compares the picks' mean
best-epoch validation accuracy over the fresh seeds 1-5. Validation data only; no test accuracy is read.

    python benchmarks/asha_retrain.py --runs DIR     # about 20 minutes on 2 cores; resumes run by run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from knnmix.provenance import git_commit, machine

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
from sweeps import FASHION, MIXUP  # noqa: E402  (the overrides both comparisons ran with)

SEEDS = range(6)  # 0: the sweeps' own training seed (a fidelity check); 1-5: fresh
FRESH = [s for s in SEEDS if s]


def picks() -> dict[str, dict]:
    """Each space's two picks (the sweep's own rule, sweep_folder.best_trial: the completed trial with the best
    epoch) with the recorded best value and wall-clock ratio."""
    replay = json.loads((RESULTS / "asha-replay" / "replay-seed0.json").read_text())
    curves = [t["val"] for t in replay["trials"]]
    ran = replay["check"]["real"]["epochs"]  # Ray's real ASHA run: the epochs each trial ran
    full = max(range(len(curves)), key=lambda i: max(curves[i]))
    asha = max((i for i in range(len(curves)) if ran[i] == len(curves[i])), key=lambda i: max(curves[i]))
    sweeps = json.loads((RESULTS / "sweeps-2026-12-01.json").read_text())["asha_vs_full"]
    mixup = json.loads((RESULTS / "sweeps-2026-12-01b.json").read_text())["asha_vs_full_mixup"]

    def best(arm: list[dict], epochs: int) -> int:
        return max((i for i, t in enumerate(arm) if t["epochs"] == epochs), key=lambda i: arm[i]["best_val_acc"])

    m_asha, m_full = best(mixup["asha"]["per_trial"], 25), best(mixup["no_early_stopping"]["per_trial"], 25)
    return {
        "knnmix": {"space": "fashion-mnist", "overrides": FASHION, "wall_ratio": sweeps["wall_ratio"],
                   "asha": {"trial": asha, "params": replay["trials"][asha]["params"],
                            "recorded_best": replay["check"]["real"]["best_val_acc"]},
                   "full": {"trial": full, "params": replay["trials"][full]["params"],
                            "recorded_best": replay["full_best_val_acc"]}},
        "mixup": {"space": "bench-quick-mixup", "overrides": MIXUP, "wall_ratio": mixup["wall_ratio"],
                  "asha": {"trial": m_asha, "params": mixup["asha"]["per_trial"][m_asha]["params"],
                           "recorded_best": mixup["asha"]["best_val_acc"]},
                  "full": {"trial": m_full, "params": mixup["no_early_stopping"]["per_trial"][m_full]["params"],
                           "recorded_best": mixup["no_early_stopping"]["best_val_acc"]}},
    }


def train_one(space: str, overrides: list[str], params: dict, seed: int, out: Path) -> list[float]:
    """One pick trained with training seed ``seed`` on the sweep's data (noise seed 0); its per-epoch val curve."""
    from knnmix import config as C
    from knnmix import spaces as SP
    from knnmix.engine.checkpoint import METRICS, read_metrics
    from knnmix.engine.train import train

    if not (out / "summary.json").exists():
        sp = SP.load_space(space, overrides)
        cfg = C.replace(sp.setting_config(sp.settings[0]), **params, seed=seed, out=str(out), threads=1,
                        **{"noise.seed": 0})
        train(cfg, overwrite=True, echo=None)
    return [r["val_acc"] for r in read_metrics(out / METRICS)]


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values), "values": values}


def train_all(jobs: dict[Any, tuple]) -> dict[Any, list[float]]:
    """:func:`train_one` of every job's arguments, two runs at a time: each job's val curve."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(train_one, *job) for key, job in jobs.items()}
        return {key: f.result() for key, f in futures.items()}


def command_line(argv: list[str] | None, doc: str, out: Path | Callable[[argparse.Namespace], Path],
                 add: Callable[[argparse.ArgumentParser], None] = lambda p: None,
                 ) -> tuple[argparse.Namespace, list[str], float, Path, str]:
    """The retrain scripts' ``--runs`` and ``--out`` (default ``out``, or ``out(args)``), and what ``add`` adds: the
    arguments, the command as typed, the start time, the runs folder and the commit the runs train at."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="folder for the runs (kept, so a stopped run resumes)")
    p.add_argument("--out", help="result JSON")
    add(p)
    args = p.parse_args(argv)
    args.out = args.out or str(out(args) if callable(out) else out)
    typed = sys.argv[1:] if argv is None else list(argv)  # (main([]) is no command line of its own)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # (now, not after the runs)
    return args, typed, time.time(), Path(args.runs).absolute(), git_commit()


def main(argv: list[str] | None = None) -> int:
    args, typed, start, runs, commit = command_line(argv, __doc__, RESULTS / "asha-retrain" / "retrain.json")
    chosen = picks()
    curves = train_all({(name, arm, seed): (s["space"], s["overrides"], s[arm]["params"], seed,
                                            runs / f"{name}-{arm}-seed{seed}")
                        for name, s in chosen.items() for arm in ("asha", "full") for seed in SEEDS})
    lines = []
    for name, s in chosen.items():
        for arm in ("asha", "full"):
            c = {seed: curves[name, arm, seed] for seed in SEEDS}
            s[arm].update(curves={str(k): v for k, v in c.items()}, seed0_best=max(c[0]),
                          best=stats([max(c[k]) for k in FRESH]), last=stats([c[k][-1] for k in FRESH]))
        a, f = s["asha"]["best"], s["full"]["best"]
        s["gap"] = f["mean"] - a["mean"]
        s["allowed"] = max(a["std"], f["std"])
        s["equal_best"] = s["gap"] <= s["allowed"]
        s["target_met"] = s["equal_best"] and s["wall_ratio"] <= 1 / 3
        lines.append(f"{name}: ASHA's pick {a['mean']:.2f} ± {a['std']:.2f}, no-early-stopping pick "
                     f"{f['mean']:.2f} ± {f['std']:.2f} (best epoch, seeds 1-5; recorded single runs {s['asha']['recorded_best']:.2f} "
                     f"and {s['full']['recorded_best']:.2f}, seed 0 again {s['asha']['seed0_best']:.2f} and "
                     f"{s['full']['seed0_best']:.2f}); gap {s['gap']:.2f}, allowed {s['allowed']:.2f}: equal best "
                     f"{'yes' if s['equal_best'] else 'no'}; wall clock {s['wall_ratio']:.2f}x; target "
                     f"{'met' if s['target_met'] else 'missed'}")
    result = {"command": shlex.join(["python", "benchmarks/asha_retrain.py", *typed]),
              "commit": commit, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "wall_s": time.time() - start, "seeds": list(SEEDS), "spaces": chosen}
    return written(args.out, result, lines)


def written(out: str, result: dict, lines: list[str]) -> int:
    """Write ``result`` to ``out``, print ``lines`` and where it went; the exit status."""
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(lines))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
