"""The tuned protocol: each method's own knobs swept per noise setting with ``knnmix sweep``, one selection each.

For every method of a tuned tier (:attr:`~knnmix_bench.tiers.Tier.spaces`), the project's own sweep runs the
method's search space with the tier's data, network and budget and the tier's tuning seed (never an evaluation
seed): one Optuna study and one ASHA per noise setting, selection on the noisy validation split only. The
configuration selected for a setting is the completed trial with the highest *last-epoch* noisy-validation accuracy
(the benchmark reports last-epoch test accuracy; ties go to the higher mean of the last three epochs). A sweep
that was stopped resumes (``knnmix sweep --resume``), trial by trial.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knnmix import config as C
from knnmix_bench.tiers import Tier
from knnmix import spaces as SP
from knnmix import sweep_folder as SF
from knnmix.scale import sweep as S
from knnmix.errors import KnnmixError
from knnmix.tracking import Store

ROOT = Path(__file__).resolve().parents[2]


def space_for(tier: Tier, method: str, settings: list[str]) -> SP.SearchSpace:
    """The method's search space with the tier's base, settings, tuning seed and overrides."""
    base = [f"{k}={v}" for k, v in {**tier.base, "seed": tier.tune_seed}.items() if k != "threads"]
    noise = "sweep.noise=[" + ", ".join(settings) + "]"
    return SP.load_space(ROOT / tier.spaces[method], [*base, noise, *tier.space_overrides])


def tune(tier: Tier, runs_dir: Path, settings: list[str], methods: list[str],
         echo: Callable[[str], None] = print, *, resume: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """Run (or, ``resume``, finish or reuse) every method's sweep; ``{method: {setting: selection}}``. A sweep
    folder that holds a sweep is used only with ``resume``, and only when it was started with this space (the
    tier's settings, budget and seed at this commit's space file)."""
    selections: dict[str, dict[str, dict[str, Any]]] = {}
    for method in dict.fromkeys(tier.tuned_by(m) for m in methods):
        if method is None:
            continue
        space = space_for(tier, method, settings)
        folder = runs_dir / tier.name / "sweeps" / method
        sweep = SF.SweepFolder(folder.absolute())
        state = SF.read_state(sweep)
        if state is not None and not resume:
            raise KnnmixError(f"{folder} already holds the tuned sweep of {method}: pass --resume to finish or "
                              "reuse it, or choose another --runs-dir")
        if state is not None:
            def plain(s: SP.SearchSpace) -> dict[str, Any]:  # (lists, not tuples: as a saved space.yaml reads back)
                return json.loads(json.dumps(s.to_dict()))

            if shown := C.differences(plain(SF.resolve_space(sweep, None, None, resume=True)), plain(space), 3):
                raise KnnmixError(f"the tuned sweep of {method} in {folder} was started with another space ({shown}): "
                                  "choose another --runs-dir, or the tier and --settings it started with")
        if state is None or state.get("status") != "done":
            echo(f"tuning {method}: {space.trials} trials x {len(settings)} settings ({folder})")
            store = Store.from_uri(f"sqlite:///{(folder.parent / 'mlflow.db').absolute()}")
            S.run_sweep(space, folder, store=store, resume=state is not None, echo=echo)
        selections[method] = select(folder, space)
    return selections


def select(folder: Path, space: SP.SearchSpace) -> dict[str, dict[str, Any]]:
    """Per noise setting, the completed trial with the highest last-epoch noisy-validation accuracy."""
    trials = S.collect_trials(SF.SweepFolder(folder.absolute()))
    out = {}
    for setting in space.settings:
        done = [t for t in trials if t.slug == setting.slug and t.completed and t.records]
        if not done:
            raise KnnmixError(f"sweep {folder}: no completed trial for {setting.spec}")

        def score(t: SF.TrialRecord) -> tuple[float, float]:
            vals = [r["val_acc"] for r in t.records if r.get("val_acc") is not None]
            return vals[-1], statistics.mean(vals[-3:])

        best = max(done, key=score)
        out[setting.spec] = {
            "selected_config": dict(best.params),
            "trial_id": best.trial_id,
            "run_folder": str(best.run_folder),
            "sweep": str(folder),
            "val_acc_last": score(best)[0],
            "trials": sum(t.slug == setting.slug for t in trials),
            "completed": len(done),
        }
    return out


def evaluation_config(selection: dict[str, Any], seed: int, out: Path, threads: int) -> C.Config:
    """The selected trial's own resolved config, on an evaluation seed (fresh noise draw and init) into ``out``."""
    cfg = C.load(Path(selection["run_folder"]) / "config.yaml")
    return C.replace(cfg, **{"seed": seed, "noise.seed": None, "out": str(out), "threads": threads,
                             "distributed.storage_path": None, "distributed.name": None, "log_every": 10**6})
