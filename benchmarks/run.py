"""The benchmark's one entry point: knnmix against its peers on the same data, network, budget and seeds.

    python benchmarks/run.py --tier smoke     # CI: digits, 2 settings, 1 seed, 2 epochs (checks the command only)
    python benchmarks/run.py --tier quick     # CPU, about 80 min on 2 cores: Fashion-MNIST, 6 settings, 3 seeds, defaults
    python benchmarks/run.py --tier quick-tuned --resume   # CPU, about 2 h 15 min: 4 settings, each method tuned per setting, then 3-5 seeds
    python benchmarks/run.py --tier full      # GPU: CIFAR-10/100 where present (else full-length Fashion-MNIST)
    python benchmarks/run.py --render benchmarks/results/quick-<date>.json   # re-write a result's .md/.png only

Writes ``benchmarks/results/<tier>-<date>.json`` (every cell, the commit, the command, the machine), ``.md`` (the
tables) and ``.png`` (accuracy vs noise setting, one line per method); the smoke tiers, which check the command only,
write them to ``<--runs-dir>/results``. Run folders of the cells go to ``--runs-dir`` (default ``runs/bench``). Only
results this command produced belong in ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # knnmix_bench, the harness beside this file
from knnmix_bench import runner  # noqa: E402
from knnmix_bench.tiers import FULL_FALLBACK, FULL_TIERS, METHODS, TIERS, get_tier  # noqa: E402
from knnmix.data import load_dataset  # noqa: E402
from knnmix.errors import DataError, KnnmixError  # noqa: E402
from knnmix.provenance import git_commit  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def tiers_to_run(name: str) -> list[str]:
    """``full`` expands to the CIFAR tiers whose images are present, or the Fashion-MNIST fallback."""
    if name != "full":
        get_tier(name)
        return [name]
    present = []
    for tier_name in FULL_TIERS:
        tier = TIERS[tier_name]
        try:
            load_dataset(tier.base["data.name"], tier.base.get("data.root"))
            present.append(tier_name)
        except DataError as exc:
            print(f"{tier_name}: skipped, {exc}", flush=True)
    if not present:
        print(f"no CIFAR images here: running {FULL_FALLBACK} instead", flush=True)
        present = [FULL_FALLBACK]
    return present


def render(json_path: Path) -> int:
    try:
        result = json.loads(json_path.read_text())
        paths = runner.write_result(result, json_path.parent, json_path)
    except (OSError, ValueError, KeyError) as exc:
        print(f"benchmark: error: cannot render {json_path}: {exc}", file=sys.stderr)
        return 2
    print("written: " + ", ".join(str(paths[k]) for k in ("md", "png")))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", default="quick", help=f"one of {', '.join(TIERS)}; 'full' runs every CIFAR full tier "
                   f"whose images are present, else {FULL_FALLBACK}")
    p.add_argument("--seeds", type=int, nargs="+", help="override the tier's seeds")
    p.add_argument("--settings", nargs="+", help="override the tier's noise settings")
    p.add_argument("--methods", nargs="+", help=f"subset of {', '.join(METHODS)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every evaluation cell (e.g. device=cuda)")
    p.add_argument("--resume", action="store_true",
                   help="continue a stopped run: finished sweeps and cells are kept, a stopped sweep resumes trial "
                        "by trial (run it with the same arguments and --runs-dir)")
    p.add_argument("--results-dir", help="where the result files go (default: benchmarks/results; for the smoke "
                   "tiers, which check the command only, <--runs-dir>/results)")
    p.add_argument("--render", metavar="RESULT.json",
                   help="only re-write the .md and .png of an existing result file from its JSON (no training)")
    p.add_argument("--runs-dir", default="runs/bench")
    args = p.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    try:
        for name in tiers_to_run(args.tier):
            tier = get_tier(name)
            methods = args.methods or list(tier.methods)
            unknown = sorted(set(methods) - set(METHODS))
            if unknown:
                raise KnnmixError(f"unknown benchmark method {unknown[0]!r}; choose from {', '.join(METHODS)}")
            seeds = args.seeds or None
            if tier.spaces and tier.tune_seed in (seeds or ()):  # before any sweep trains
                raise KnnmixError(f"--seeds includes {tier.tune_seed}, the seed tier {tier.name}'s sweeps tune with: "
                                  "evaluated on it, a selected config scores its own tuning luck; choose other seeds")
            settings = args.settings or list(tier.settings)
            print(f"# {tier.name}: {tier.description}", flush=True)
            commit = git_commit()  # the code that runs the cells, even if the checkout changes meanwhile
            started = time.time()
            runs = Path(args.runs_dir)
            selections = None
            if tier.spaces:
                from knnmix_bench.tuned import tune

                selections = tune(tier, runs, settings, methods, echo=lambda s: print(s, flush=True),
                                  resume=args.resume)
            cells = runner.run_tier(tier, runs, seeds=seeds, settings=settings, methods=methods,
                                    cfg_overrides=args.overrides, selections=selections, resume=args.resume,
                                    echo=lambda s: print(s, flush=True))
            command = shlex.join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
            all_seeds = sorted({c["seed"] for c in cells})
            result = runner.result_record(tier, cells, command, all_seeds, settings, methods, commit=commit,
                                          selections=selections)
            # this invocation's wall clock (sweeps and cells); a resumed run's earlier invocations are not in it
            result["wall_s"] = round(time.time() - started, 1)
            smoke = Path(args.runs_dir) / "results" if name.startswith("smoke") else HERE / "results"
            paths = runner.write_result(result, Path(args.results_dir or smoke))
            print(paths["md"].read_text())
            print("written: " + ", ".join(str(v) for v in paths.values()))
    except KnnmixError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
