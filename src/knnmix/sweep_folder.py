"""A sweep's folder, without Ray: its files and state (``sweep_state.json``), the search space it runs, each trial's
config and how many run at once, its trials' records and results (the best trial, ``sweep_summary.md``) and its
Optuna studies (importances, trials a kill left running). Running the sweep on Ray Tune is
:mod:`knnmix.scale.sweep`'s; what the folder holds: docs/sweeps.md.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knnmix import config as C
from knnmix.engine.checkpoint import METRICS, RUN_INFO, atomic_write_text, read_metrics
from knnmix.engine.report import pct
from knnmix.errors import KnnmixError, one_line
from knnmix.provenance import now
from knnmix.spaces import METRIC, SETTING_KEY, NoiseSetting, SearchSpace, load_space, parse_space
from knnmix.tracking import Store

STATE_FILE, SPACE_FILE, OPTUNA_DB = "sweep_state.json", "space.yaml", "optuna.db"
SUMMARY_JSON, SUMMARY_MD = "sweep_summary.json", "sweep_summary.md"
TUNE_DIR = "tune"


@dataclass(frozen=True)
class SweepFolder:
    root: Path

    def trial_dir(self, slug: str, trial_id: str) -> Path:
        return self.root / slug / "trials" / trial_id

    def file(self, name: str) -> Path:
        return self.root / name

    @property
    def optuna_storage(self) -> str:
        """The studies' SQLAlchemy URL; '%' and '?' in the folder's path are escaped (SQLAlchemy unescapes them, and
        a bare '?' would start the URL's query: the studies went to a database named after the path's head)."""
        return "sqlite:///" + str(self.file(OPTUNA_DB)).replace("%", "%25").replace("?", "%3F")


def in_process(cfg: C.Config) -> bool:
    """Whether a trial of ``cfg`` runs the engine in its own process (else it is a Ray Train run)."""
    return cfg.distributed.workers <= 1


def max_concurrent(space: SearchSpace, cfg: C.Config, cluster: dict[str, float]) -> int:
    """``max_concurrent_trials``, or the trials the cluster's CPUs (GPUs) fit, at most every trial of the sweep."""
    if space.max_concurrent_trials is not None:
        return space.max_concurrent_trials
    x, workers = cfg.distributed, max(cfg.distributed.workers, 1)
    n = int(cluster.get("CPU", 0) // (workers * x.cpus_per_worker))
    if x.use_gpu:
        n = min(n, int(cluster.get("GPU", 0) // workers))
    return max(1, min(n, space.trials * len(space.settings)))


def trial_config(payload: dict[str, Any], slug: str, sampled: dict[str, Any], trial_id: str) -> C.Config:
    """The config trial ``trial_id`` trains: its setting's config, the sampled values, its own run folder, Ray
    Train run name (the trial id: a restarted trial resumes) and ``distributed.cpus_per_worker`` as threads."""
    cfg = C.from_dict(payload["configs"][slug])
    root = Path(payload["root"])
    changes = {**sampled, "out": str(SweepFolder(root).trial_dir(slug, trial_id)), "distributed.name": trial_id,
               "distributed.storage_path": str(root / slug / "ray"), "threads": cfg.distributed.cpus_per_worker}
    return C.replace(cfg, **changes)


def sweep_root(out: str) -> Path:
    """The sweep folder ``--out`` names, absolute; an empty path or a URI is a one-line error (pathlib made the
    working directory, or ``./s3:/bucket/...``, of them)."""
    if not out:
        raise KnnmixError("--out: an empty path; name the sweep folder (an unset shell variable?)")
    if "://" in out:
        raise KnnmixError(f"--out {out!r}: a sweep folder is a local (or mounted shared) folder; the sweep's runs and "
                          "checkpoints go there, so put it on a file system every node mounts")
    return Path(out).expanduser().absolute()


def read_state(folder: SweepFolder) -> dict[str, Any] | None:
    """``sweep_state.json`` (None: there is none), checked for the fields a resume reads first."""
    path = folder.file(STATE_FILE)
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise KnnmixError(f"cannot read sweep state {str(path)!r}: {exc.strerror or one_line(exc)}") from None
    try:
        state = json.loads(raw)
        tracking, ml = state["tracking"], state["mlflow"]
        if not (isinstance(state["space_label"], str) and isinstance(ml, dict)
                and all(isinstance(ml.get(k, ""), str) for k in ("experiment_id", "sweep_run_id"))
                and isinstance(runs := ml.get("settings", {}), dict) and all(isinstance(r, str) for r in runs.values())
                and isinstance(tracking["uri"], str) and isinstance(tracking["artifact_root"], str | None)
                and isinstance(state.get("folder", ""), str)):
            raise TypeError("a field of the wrong type")
    except (ValueError, TypeError, KeyError) as exc:  # (json's and UTF-8's errors are ValueErrors)
        what = f"no {exc}" if isinstance(exc, KeyError) else one_line(exc)
        raise KnnmixError(f"sweep state {str(path)!r} is damaged ({what}); knnmix writes it whole, so it was edited "
                          "or the disk failed: restore it from a backup, or start the sweep in another --out") from None
    return state


def check_state(folder: SweepFolder, resume: bool) -> dict[str, Any] | None:
    """The sweep state: required with ``resume``, refused without."""
    path = folder.file(STATE_FILE)
    if resume and not path.exists():
        raise KnnmixError(f"nothing to resume: {str(path)!r} does not exist")
    if not resume and path.exists():
        raise KnnmixError(f"sweep folder {str(folder.root)!r} already holds a sweep; pass --resume to continue it "
                          "or choose another --out")
    return read_state(folder) if resume else None


def resolve_space(folder: SweepFolder, space_arg: str | None, overrides: list[str] | None, *, resume: bool
                  ) -> SearchSpace:
    """The space to run: the file (+ ``--set``), or with ``resume`` the sweep folder's saved one (which a given file
    must then match)."""
    state = check_state(folder, resume)
    if not resume:
        if space_arg is None:
            raise KnnmixError("name a search space file, e.g. knnmix sweep search_spaces/smoke.yaml")
        return load_space(space_arg, overrides)
    saved = parse_space(C.read_yaml(folder.file(SPACE_FILE), f"the sweep's {SPACE_FILE}"), label=state["space_label"],
                        started=True)
    # Tune restores the experiment as started (its trial count, searcher, schedulers): an edited space.yaml ran the
    # old one, then (more trials) said "sweep stopped ... --resume" after every resume, never finishing
    as_saved = json.loads(json.dumps(saved.to_dict()))  # as sweep_state.json holds it (lists, not tuples)
    if "space" in state and (shown := C.differences(state["space"], as_saved, 3)):
        raise KnnmixError(f"{str(folder.file(SPACE_FILE))!r} was edited after the sweep started ({shown}); a sweep "
                          "continues the space it started with: undo the edit, or start the edited space in another "
                          "--out")
    if space_arg is None and not overrides:
        return saved
    if space_arg is None:
        raise KnnmixError("--resume continues the space a sweep started with: --set cannot change it (resume without "
                          "--set; to run a changed space, start it in another --out)")
    given = load_space(space_arg, overrides)
    if shown := C.differences(saved.to_dict(), given.to_dict(), 3):
        raise KnnmixError(f"search space {given.label} differs from the one sweep folder {str(folder.root)!r} was "
                          f"started with ({shown}); run --resume without the space file, or choose another --out")
    return saved


def new_state(space: SearchSpace, store: Store) -> dict[str, Any]:
    """What ``sweep_state.json`` holds when a sweep starts; ``space``: the space as started (see resolve_space)."""
    return {"version": 2, "name": space.name, "space_label": space.label, "status": "running", "started": now(),
            "space": space.to_dict(), "tracking": {"uri": store.uri, "artifact_root": store.artifact_root},
            "mlflow": {}}


def optuna_command(storage: str) -> str:
    """The command that opens the studies, quoted for a shell (a sweep folder may hold spaces or '#')."""
    return f"optuna-dashboard {shlex.quote(storage)}"


def write_state(folder: SweepFolder, state: dict[str, Any]) -> None:
    atomic_write_text(folder.file(STATE_FILE), json.dumps(state, indent=2) + "\n")


def startup_trials(space: SearchSpace) -> int:
    """Random trials before TPE models the results: the space's value, else a quarter of the budget (2 to 10)."""
    return space.startup_trials if space.startup_trials is not None else max(2, min(10, space.trials // 4))


def study_name(space: SearchSpace, setting: NoiseSetting) -> str:
    return f"{space.name}/{setting.spec}"


# ----------------------------------------------------------------------------------------------------------------
# Trials and results


def reported(folder: Path, last: float) -> list[dict[str, Any]]:
    path = folder / METRICS
    return [r for r in read_metrics(path) if int(r["epoch"]) <= last] if path.exists() else []


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch with the best noisy-validation accuracy (the first on ties)."""
    vals = [r for r in records if r.get(METRIC) is not None]
    return max(vals, key=lambda r: (r[METRIC], -r["epoch"])) if vals else None


def sampled_values(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config's sampled values (without its noise setting)."""
    return {k: v for k, v in config.items() if k != SETTING_KEY}


def run_name(spec: str, sampled: dict[str, Any]) -> str:
    """A trial's run name: its noise setting and sampled values, e.g. ``symmetric:0.5 k=3 temperature=0.71``."""
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join([spec, *(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in sampled.items())])[:250]


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, ...
    slug: str
    params: dict[str, Any]
    run_folder: Path
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl up to the last epoch Tune saw
    completed: bool = False  # ran every epoch and wrote summary.json
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "ERROR"

    @property
    def stopped_early(self) -> bool:
        return not self.failed and not self.completed

    @property
    def epochs_run(self) -> int:
        return max((int(r["epoch"]) for r in self.records), default=0)

    @property
    def warnings(self) -> list[str]:
        """The KnnmixWarnings its run's set-up gave (its ``run.json``; none for a trial that never started)."""
        try:
            return list(json.loads((self.run_folder / RUN_INFO).read_text()).get("warnings", []))
        except (OSError, ValueError, AttributeError):
            return []

    def best(self) -> dict[str, Any] | None:
        """The epoch with the best noisy-validation accuracy (first on ties) and its test accuracy."""
        r = best_record(self.records)
        return None if r is None else {"val_acc": r[METRIC], "test_acc": r.get("test_acc"), "epoch": int(r["epoch"])}


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    """The completed trial with the highest noisy-validation accuracy (any trial if none completed)."""
    pool = [t for t in trials if t.completed and t.best()] or [t for t in trials if t.best()]
    return max(pool, key=lambda t: (t.best()["val_acc"], -t.best()["epoch"]), default=None)  # ties: the first created


def end_orphan_trials(storage: str, name: str) -> None:
    """Fail the study's trials still running once every Tune trial of the setting has ended: a sweep killed between
    Optuna's write (at once) and Tune's save (every few seconds) left trials asked that Tune never ran."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.set_user_attr(f"orphan_trial_{trial.number}", "asked before the sweep was killed; Tune never ran it")
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def study_importances(storage: str, name: str) -> tuple[dict[str, float] | None, int]:
    """Optuna's fANOVA importances of the searched keys in the setting's own study (none with too few trials),
    and the number of finished trials they come from (few trials give importances that mean little)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        counted = sum(t.value is not None and math.isfinite(t.value) and set(importances) <= set(t.params)
                      for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        return importances, counted  # (the trials fANOVA reads: finished, with a value and every searched key)
    except (ValueError, RuntimeError, KeyError):
        return None, 0


def config_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def summary_table(summary: dict[str, Any], reasons: bool = True) -> str:
    """The sweep's table, and (``reasons``) one line per failed trial saying why."""
    lines = ["| noise | trials | stopped early | failed | best val acc (%) | its test acc (%) | best config (sampled) |",
             "|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
        b = s["best"] or {}
        lines.append(f"| {s['noise']} | {s['trials']} | {s['stopped_early']} | {s['failed']} | "
                     f"{pct(b.get('val_acc'), '')} | {pct(b.get('test_acc'), '')} | "
                     f"{config_text(b.get('params', {})) if b else 'n/a'} |")
    lines.append(f"\nSelected on the noisy-validation accuracy ({METRIC}, best epoch of each completed trial); the "
                 "test accuracy of that epoch is reported only.")
    registered = [f"registered: {s['noise']}: {s['best']['registered_model']}" for s in summary["settings"]
                  if (s["best"] or {}).get("registered_model")]
    lines += ["", *registered] if registered else []
    lines += [f"failed: {s['noise']} trial {tid}: {err}" for s in summary["settings"] if reasons
              for tid, err in (s.get("errors") or {}).items()]  # (Tune's own traceback: --verbose)
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    out = [f"# Sweep {summary['name']}", "", f"Commit {summary['commit']}.", "", summary_table(summary, reasons=False), ""]
    for s in summary["settings"]:
        out += [f"## {s['noise']}", ""]
        b = s["best"]
        if b:
            out.append(f"- best trial `{b['trial_id']}` (epoch {b['epoch']}): val {pct(b['val_acc'])}, "
                       f"test {pct(b['test_acc'])} (last epoch {pct(b['last_test_acc'])}), run folder "
                       f"`{b['run_folder']}`")
            out.append(f"- sampled: {config_text(b['params'])}")
        out.append(f"- trials: {s['trials']} ({s['completed']} completed, {s['stopped_early']} stopped early by "
                   f"ASHA, {s['failed']} failed); Optuna study `{s['study']}`")
        out += [f"- `{tid}` failed: {err}" for tid, err in (s.get("errors") or {}).items()]
        out.append("")
    m = summary["mlflow"]
    out += [f"MLflow: experiment `{m['experiment']}`, sweep run `{m['sweep_run_id']}`; `{m['ui']}`",
            f"Optuna: `{optuna_command(summary['optuna_storage'])}`", ""]
    return "\n".join(out)
