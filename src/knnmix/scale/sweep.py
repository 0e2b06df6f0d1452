"""Hyper-parameter sweeps: Ray Tune + Optuna (seeded TPE) + ASHA over Ray Train runs of the engine, logged to MLflow.

:func:`run_sweep` is what ``knnmix sweep SPACE.yaml`` runs. For every noise setting of the space, one after the
other, it runs one Tune experiment with its own Optuna study (``OptunaSearch`` cannot take a grid axis) and its own
ASHA scheduler on the noisy-validation accuracy (``val_acc``, mode max; time axis = the engine's ``epoch``). Each
trial is :func:`run_trial`, a Tune function trainable that builds a ``TorchTrainer`` through the Ray Train layer
(:func:`knnmix.scale.train.fit`) and reports every epoch to Tune with Ray Train's ``TuneReportCallback``.

Sweep folder (``--out``, default ``runs/sweeps/<name>``)::

    space.yaml                  the resolved space (file + --set), what --resume continues
    sweep_state.json            MLflow store and run ids, status of each noise setting
    sweep_summary.json / .md    per noise setting: best config, its val / test accuracy, trials run / stopped early
    plots/                      best accuracy per noise setting
    <noise slug>/               e.g. symmetric-0.2
      tune/                     the Tune experiment (Tuner.restore continues it, Optuna state included)
      trials/<trial id>/        each trial's run folder (config.yaml, metrics.jsonl, checkpoint.pt, ...)
      ray/<trial id>/           each trial's Ray Train checkpoints (run name = trial id: a restarted trial resumes)
      plots/                    learning curves, clean-probability histogram, parameter importances

Resources: the trial function itself takes no CPU (``{"cpu": 0, "memory": ...}``; the default would take a CPU its
Train workers need and deadlock a small cluster), and ``max_concurrent_trials`` defaults to the cluster's CPUs
divided by the CPUs of one trial's workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from knnmix import config as C
from knnmix.engine.outputs import LABEL_ISSUES, METRICS, SUMMARY, read_metrics
from knnmix.errors import KnnmixError
from knnmix.scale import tracking as T
from knnmix.scale.spaces import METRIC, MODE, NoiseSetting, SearchSpace, load_space, parse_space

SPACE_FILE = "space.yaml"
STATE_FILE = "sweep_state.json"
SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"
TUNE_DIR = "tune"
TIME_ATTR = "epoch"
#: Nominal memory of the trial function: Tune rejects a resource request of zero CPUs alone.
TRIAL_MEMORY = 64 * 1024**2
#: Seconds between Tune's experiment-state saves (Tune's "auto" waits at least 10 s): what a resume starts from.
EXPERIMENT_CHECKPOINT_S = "2"
DEFAULT_ROOT = Path("runs") / "sweeps"


# ----------------------------------------------------------------------------------------------------------------
# Folder and state


@dataclass(frozen=True)
class SweepFolder:
    root: Path

    def setting(self, slug: str) -> Path:
        return self.root / slug

    def tune_dir(self, slug: str) -> Path:
        return self.root / slug / TUNE_DIR

    def trials_dir(self, slug: str) -> Path:
        return self.root / slug / "trials"

    def ray_storage(self, slug: str) -> Path:
        return self.root / slug / "ray"

    def file(self, name: str) -> Path:
        return self.root / name


def read_state(folder: SweepFolder) -> dict[str, Any] | None:
    path = folder.file(STATE_FILE)
    return json.loads(path.read_text()) if path.exists() else None


def write_state(folder: SweepFolder, state: dict[str, Any]) -> None:
    path = folder.file(STATE_FILE)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def resolve_space(
    folder: SweepFolder, space_arg: str | None, overrides: list[str] | None, *, resume: bool
) -> SearchSpace:
    """The space to run: the file (+ ``--set``), or with ``resume`` the sweep folder's saved one (which a given
    file must then match)."""
    state = read_state(folder)
    if not resume:
        if state is not None:
            raise KnnmixError(
                f"sweep folder {str(folder.root)!r} already holds a sweep; pass --resume to continue it or choose "
                "another --out"
            )
        if space_arg is None:
            raise KnnmixError("name a search space file, e.g. knnmix sweep search_spaces/smoke.yaml")
        return load_space(space_arg, overrides)
    if state is None:
        raise KnnmixError(f"nothing to resume: {str(folder.file(STATE_FILE))!r} does not exist")
    saved = parse_space(
        _read_yaml(folder.file(SPACE_FILE)), label=state.get("space_label", SPACE_FILE), root=folder.root
    )
    if space_arg is None and not overrides:
        return saved
    if space_arg is None:
        raise KnnmixError("--resume with --set needs the space file too (or resume without --set)")
    given = load_space(space_arg, overrides)
    a, b = C.flatten(saved.to_dict()), C.flatten(given.to_dict())
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:3])
        raise KnnmixError(
            f"search space {given.label} differs from the one sweep folder {str(folder.root)!r} was started with "
            f"({shown}); run --resume without the space file to continue the saved one, or choose another --out"
        )
    return saved


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------------------------------------------
# Tune pieces (pure: built from the space, testable without Ray running)


def make_searcher(space: SearchSpace, setting: NoiseSetting | None = None) -> Any:
    """``OptunaSearch`` over the space's distributions with a TPE sampler seeded by ``seed``."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = {"seed": space.seed}
    if space.startup_trials is not None:
        kwargs["n_startup_trials"] = space.startup_trials
    return OptunaSearch(
        space=space.distributions(),
        metric=METRIC,
        mode=MODE,
        sampler=optuna.samplers.TPESampler(**kwargs),
        study_name=f"{space.name}-{setting.slug}" if setting else space.name,
        points_to_evaluate=[dict(p) for p in space.start_with] or None,
    )


class FinalEpochASHA(ASHAScheduler):
    """ASHA (``val_acc``, max, time axis ``epoch``) with two additions for sweeps of engine runs.

    * A trial's last epoch is never stopped: the label audit and ``summary.json`` come after the last report, and a
      stop there would cut them off.
    * Tune does not save a scheduler's state with the experiment, so on a resumed sweep the rungs would start
      empty. Each trial Tune adds (restored ones included) is recorded at the rungs it already passed, read from its
      run folder's ``metrics.jsonl`` (up to the last epoch Tune saw).
    """

    def __init__(self, *, final_epoch: int, trials_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._final_epoch = final_epoch
        self._trials_dir = trials_dir

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        self._record_past_rungs(trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) >= self._final_epoch:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action

    def _record_past_rungs(self, trial: Any) -> None:
        if not self._trials_dir:
            return
        path = Path(self._trials_dir) / trial.trial_id / METRICS
        last = int((getattr(trial, "last_result", None) or {}).get(self._time_attr, 0) or 0)
        if not path.exists() or not last:
            return
        values = {
            int(r["epoch"]): r[self._metric] for r in read_metrics(path)
            if int(r["epoch"]) <= last and r.get(self._metric) is not None
        }
        bracket = self._trial_info[trial.trial_id]
        for milestone, recorded in bracket._rungs:
            reached = [e for e in sorted(values) if e >= milestone]
            if reached:  # ASHA records a trial at its first result at or past the milestone
                recorded[trial.trial_id] = self._metric_op * values[reached[0]]


def make_scheduler(space: SearchSpace, epochs: int | None = None, trials_dir: str | Path | None = None) -> Any:
    """The ASHA scheduler of one noise setting (:class:`FinalEpochASHA`)."""
    final = epochs if epochs is not None else space.epochs
    return FinalEpochASHA(
        final_epoch=final,
        trials_dir=str(trials_dir) if trials_dir is not None else None,
        time_attr=TIME_ATTR,
        metric=METRIC,
        mode=MODE,
        max_t=space.asha.max_t or final,
        grace_period=space.asha.grace_period,
        reduction_factor=space.asha.reduction_factor,
        brackets=space.asha.brackets,
    )


def trial_resources() -> dict[str, Any]:
    """The trial function's own resources: no CPU (its Train workers reserve theirs)."""
    return {"cpu": 0, "memory": TRIAL_MEMORY}


def max_concurrent(space: SearchSpace, cfg: C.Config, cluster: dict[str, float]) -> int:
    """``max_concurrent_trials``, or the cluster's CPUs (GPUs) divided by one trial's workers' CPUs (GPUs)."""
    if space.max_concurrent_trials is not None:
        return space.max_concurrent_trials
    x = cfg.distributed
    n = int(cluster.get("CPU", 0) // (x.workers * x.cpus_per_worker))
    if x.use_gpu:
        n = min(n, int(cluster.get("GPU", 0) // x.workers))
    return max(1, min(n, space.trials))


def absolute_config(cfg: C.Config) -> C.Config:
    """Local paths of the config made absolute on the driver (trials run in their own working directory)."""
    changes: dict[str, Any] = {}
    for key, value in (
        ("data.root", cfg.data.root),
        ("noise.cifar_n_dir", cfg.noise.cifar_n_dir),
        ("model.pretrained", cfg.model.pretrained),
        ("data.labels_file", cfg.data.labels_file),
        ("data.test_root", cfg.data.test_root),
    ):
        if value is not None and "://" not in value and not Path(value).expanduser().is_absolute():
            if key == "data.labels_file" and cfg.data.root is not None:
                continue  # relative to data.root
            changes[key] = str(Path(value).expanduser().absolute())
    return C.replace(cfg, **changes) if changes else cfg


def trial_config(payload: dict[str, Any], sampled: dict[str, Any], trial_id: str) -> C.Config:
    """The config trial ``trial_id`` trains: the noise setting's config, the sampled values, and its own run
    folder and Ray Train run name (the trial id: a restarted trial resumes its checkpoints)."""
    cfg = C.from_dict(payload["config"])
    return C.replace(cfg, **{
        **sampled,
        "out": str(Path(payload["trials_dir"]) / trial_id),
        "distributed.storage_path": payload["storage"],
        "distributed.name": trial_id,
    })


def run_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """One trial (a Tune function trainable): a Ray Train run of the engine reporting each epoch to Tune.

    Nothing after ``fit`` may matter: a trial that ASHA stops is killed inside it (rank 0 writes the run folder as
    it goes).
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from knnmix.scale.train import fit, run_exists

    cfg = trial_config(payload, config, tune.get_context().get_trial_id())
    fit(cfg, resume=run_exists(cfg), callbacks=[TuneReportCallback()])


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class TrialRecord:
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, ...
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

    def best(self) -> dict[str, Any] | None:
        """The epoch with the best noisy-validation accuracy (first on ties) and its test accuracy."""
        vals = [r for r in self.records if r.get("val_acc") is not None]
        if not vals:
            return None
        r = max(vals, key=lambda r: (r["val_acc"], -r["epoch"]))
        return {"epoch": int(r["epoch"]), "val_acc": r["val_acc"], "test_acc": r.get("test_acc")}

    @property
    def last_val(self) -> float | None:
        vals = [r["val_acc"] for r in self.records if r.get("val_acc") is not None]
        return vals[-1] if vals else None


def collect_trials(folder: SweepFolder, setting: NoiseSetting, sampled_keys: list[str]) -> list[TrialRecord]:
    """Every trial of a noise setting's Tune experiment, with its epochs read from its run folder."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(folder.tune_dir(setting.slug)))
    out = []
    for trial in sorted(analysis.trials, key=_creation_order):
        run = folder.trials_dir(setting.slug) / trial.trial_id
        last = int((trial.last_result or {}).get(TIME_ATTR, 0) or 0)
        records = read_metrics(run / METRICS) if (run / METRICS).exists() else []
        if last:
            records = [r for r in records if int(r["epoch"]) <= last]
        error = None
        if trial.status == "ERROR":
            error = _error_line(trial)
        out.append(TrialRecord(
            trial_id=trial.trial_id,
            status=str(trial.status),
            params={k: v for k, v in trial.config.items() if k in sampled_keys},
            run_folder=run,
            records=records,
            completed=(run / SUMMARY).exists() and trial.status != "ERROR",
            error=error,
        ))
    return out


def _creation_order(trial: Any) -> tuple[int, str]:
    """Tune's experiment tag starts with the trial's index (``"3_method.k=2,..."``)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, trial.trial_id)


def _error_line(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    try:
        text = Path(trial.path, path).read_text() if path and not Path(path).is_absolute() else Path(path).read_text()
    except (OSError, TypeError):
        return "failed (see the Tune trial folder)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "KnnmixError" in ln or "ConfigError" in ln or "DataError" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "failed"


def best_trial(trials: list[TrialRecord]) -> TrialRecord | None:
    """The completed trial with the highest noisy-validation accuracy (any trial if none completed)."""
    pool = [t for t in trials if t.completed and t.best()] or [t for t in trials if t.best()]
    if not pool:
        return None
    return max(pool, key=lambda t: (t.best()["val_acc"], -t.best()["epoch"], [-ord(c) for c in t.trial_id]))


# ----------------------------------------------------------------------------------------------------------------
# The driver


@contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    if old is None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)


def run_sweep(
    space: SearchSpace,
    out: str | Path,
    *,
    store: T.Store | None = None,
    resume: bool = False,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run (or continue) the sweep of ``space`` into ``out``; returns the summary (``sweep_summary.json``)."""
    say = echo or (lambda _s: None)
    folder = SweepFolder(Path(out).expanduser().absolute())
    state = read_state(folder)
    if resume and state is None:
        raise KnnmixError(f"nothing to resume: {str(folder.file(STATE_FILE))!r} does not exist")
    if not resume and state is not None:
        raise KnnmixError(
            f"sweep folder {str(folder.root)!r} already holds a sweep; pass --resume to continue it or choose "
            "another --out"
        )
    if state is not None:
        saved = T.Store(state["tracking"]["uri"], state["tracking"]["artifact_root"])
        if store is not None and store.uri != saved.uri:
            raise KnnmixError(
                f"--tracking-uri {store.uri!r} differs from the store this sweep logs to ({saved.uri!r})"
            )
        store = saved
    store = store or T.Store.default()
    base_cfgs = {s.slug: absolute_config(space.setting_config(s)) for s in space.noise}  # validates each setting

    folder.root.mkdir(parents=True, exist_ok=True)
    if state is None:
        (folder.file(SPACE_FILE)).write_text(space.to_yaml())
        state = {
            "version": 1, "name": space.name, "space_label": space.label, "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tracking": {"uri": store.uri, "artifact_root": store.artifact_root},
            "mlflow": {}, "settings": {s.slug: {"noise": s.spec, "status": "pending"} for s in space.noise},
        }
        write_state(folder, state)

    # MLflow: the experiment, the sweep's run and one run per noise setting (ids kept in the sweep folder)
    ml = state["mlflow"]
    ml["experiment_id"] = T.experiment_id(store, space.experiment_name)
    sweep_tags = {T.KIND_TAG: "sweep", "knnmix.sweep_folder": str(folder.root)}
    if space.description:
        sweep_tags["mlflow.note.content"] = space.description
    ml["sweep_run_id"] = T.start_run(
        store, ml["experiment_id"], space.name, sweep_tags, reuse=ml.get("sweep_run_id"),
    )
    runs = ml.setdefault("settings", {})
    for s in space.noise:
        runs[s.slug] = T.start_run(
            store, ml["experiment_id"], s.spec, {T.KIND_TAG: "noise_setting", "knnmix.noise": s.spec},
            reuse=runs.get(s.slug), parent=ml["sweep_run_id"],
        )
    write_state(folder, state)
    _log_sweep_params(store, ml["sweep_run_id"], space, folder)

    import ray

    from knnmix.scale import ray_env

    ray_env.ensure_ray()
    cluster = ray.cluster_resources()
    say(f"sweep {space.name}: {len(space.noise)} noise setting(s) x {space.trials} trials, "
        f"{', '.join(space.params)} searched; folder {folder.root}; MLflow {store.uri}")

    settings_summary = []
    for s in space.noise:
        cfg = base_cfgs[s.slug]
        entry = state["settings"][s.slug]
        if entry["status"] != "done":
            entry["status"] = "running"
            write_state(folder, state)
            n = max_concurrent(space, cfg, cluster)
            say(f"\n=== noise {s.spec}: {space.trials} trials, up to {n} at a time ===")
            _fit_setting(space, s, cfg, folder, store, ml, n)
            unfinished = _unfinished(folder, s, space.trials)
            if unfinished:  # Tune returns normally after Ctrl+C (it saved its state first)
                say(f"\nsweep stopped during noise setting {s.spec} ({unfinished}); continue it with:\n"
                    f"  knnmix sweep --resume --out {folder.root}")
                raise KeyboardInterrupt
        summary = _finalize_setting(space, s, cfg, folder, store, ml)
        entry["status"] = "done"
        write_state(folder, state)
        settings_summary.append(summary)

    summary = _finalize_sweep(space, folder, store, ml, settings_summary)
    state["status"] = "done"
    state["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_state(folder, state)
    say("")
    say(summary_table(summary))
    say(f"\nsweep folder: {folder.root}")
    say(f"MLflow UI: {store.ui_command()}")
    if store.is_local:
        say("  (MLflow 3 starts ten job-runner processes with it unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false)")
    return summary


def _fit_setting(
    space: SearchSpace, setting: NoiseSetting, cfg: C.Config, folder: SweepFolder, store: T.Store,
    ml: dict[str, Any], concurrency: int,
) -> None:
    from ray import tune

    slug = setting.slug
    payload = {
        "config": C.to_dict(cfg),
        "trials_dir": str(folder.trials_dir(slug)),
        "storage": str(folder.ray_storage(slug)),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), trial_resources())
    exp_dir = folder.tune_dir(slug)
    with _env("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_CHECKPOINT_S):
        if tune.Tuner.can_restore(str(exp_dir)):
            tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            logger = T.TrialLogger(
                store=store, experiment_id=ml["experiment_id"], parent_run_id=ml["settings"][slug],
                noise=setting.spec, trials_dir=str(folder.trials_dir(slug)), sampled_keys=list(space.params),
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    num_samples=space.trials,
                    search_alg=make_searcher(space, setting),
                    scheduler=make_scheduler(space, cfg.epochs, folder.trials_dir(slug)),
                    max_concurrent_trials=concurrency,
                    reuse_actors=False,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_DIR,
                    storage_path=str(folder.setting(slug)),
                    failure_config=tune.FailureConfig(max_failures=0),
                    callbacks=[logger],
                    verbose=1,
                ),
            )
        tuner.fit()


def _unfinished(folder: SweepFolder, setting: NoiseSetting, trials: int) -> str | None:
    """Why the noise setting's Tune experiment is not complete, or ``None`` when every trial has ended."""
    from ray.tune import ExperimentAnalysis

    found = ExperimentAnalysis(str(folder.tune_dir(setting.slug))).trials
    ended = [t for t in found if t.status in ("TERMINATED", "ERROR")]
    if len(found) < trials or len(ended) < len(found):
        return f"{len(ended)} of {trials} trials ended"
    return None


def _finalize_setting(
    space: SearchSpace, setting: NoiseSetting, cfg: C.Config, folder: SweepFolder, store: T.Store,
    ml: dict[str, Any],
) -> dict[str, Any]:
    """Per noise setting: the summary entry, and (once) the setting run's artifacts: learning curves, the best
    trial's label issues and clean-probability histogram, parameter importances, the best model."""
    slug = setting.slug
    trials = collect_trials(folder, setting, list(space.params))
    best = best_trial(trials)
    client = store.client()
    run_id = ml["settings"][slug]
    child_ids = {
        r.data.tags.get(T.TRIAL_TAG): r.info.run_id
        for r in client.search_runs([ml["experiment_id"]], filter_string=f"tags.`{T.PARENT_TAG}` = '{run_id}'")
    }
    entry: dict[str, Any] = {
        "noise": setting.spec,
        "slug": slug,
        "trials": len(trials),
        "completed": sum(t.completed for t in trials),
        "stopped_early": sum(t.stopped_early for t in trials),
        "failed": sum(t.failed for t in trials),
        "errors": {t.trial_id: t.error for t in trials if t.failed},
        "mlflow_run_id": run_id,
        "best": None,
        "trial_ids": [t.trial_id for t in trials],
    }
    if best is not None:
        b = best.best() or {}
        entry["best"] = {
            "trial_id": best.trial_id,
            "params": best.params,
            "val_acc": b.get("val_acc"),
            "test_acc": b.get("test_acc"),
            "epoch": b.get("epoch"),
            "completed": best.completed,
            "run_folder": str(best.run_folder),
            "mlflow_run_id": child_ids.get(best.trial_id),
        }
    run = client.get_run(run_id)
    if run.data.tags.get(T.FINALIZED_TAG) == "true":  # logged before the driver stopped: do not log twice
        entry["model_uri"] = run.data.tags.get("knnmix.model_uri")
        entry["importances"] = json.loads(run.data.tags.get("knnmix.importances", "null") or "null")
        client.set_terminated(run_id, status="FINISHED")
        return entry

    plots = folder.setting(slug) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    T.log_params(client, run_id, {
        "noise.spec": setting.spec, "trials": space.trials, "seed": space.seed, "metric": METRIC,
        **{f"asha.{k}": v for k, v in space.asha.to_dict().items()},
        **{f"params.{k}": p.describe() for k, p in space.params.items()},
        **{f"set.{k}": v for k, v in setting.overrides.items()},
    })
    curves = {t.trial_id: t.records for t in trials if t.records}
    if curves:
        client.log_artifact(run_id, str(T.plot_learning_curves(
            plots / "learning_curves.png", curves, best.trial_id if best else None,
            f"{space.name}: {setting.spec}, every trial")), "plots")
    try:
        scored = [(t.params, float(t.last_val)) for t in trials if t.last_val is not None and not t.failed]
        importances = T.param_importances(space.distributions(), scored, space.seed)
        entry["importances"] = importances
        if importances:
            client.log_artifact(run_id, str(T.plot_importances(
                plots / "param_importances.png", importances, f"{setting.spec}: parameter importances")), "plots")
            client.log_dict(run_id, importances, "param_importances.json")
    except (ValueError, RuntimeError) as exc:
        entry["importances"] = None
        client.set_tag(run_id, "knnmix.importances_note", " ".join(str(exc).split())[:500])
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(entry[k]), now, 0) for k in ("trials", "completed", "stopped_early", "failed")]
    if best is not None:
        b = entry["best"]
        client.set_tag(run_id, "knnmix.best_trial", best.trial_id)
        if b["mlflow_run_id"]:
            client.set_tag(b["mlflow_run_id"], "knnmix.best", "true")
        metrics += [Metric("best_val_acc", float(b["val_acc"]), now, 0)]
        if b["test_acc"] is not None:
            metrics += [Metric("best_test_acc", float(b["test_acc"]), now, 0)]
        for p in T.label_issue_artifacts(best.run_folder):
            client.log_artifact(run_id, str(p), "best_trial")
        if (best.run_folder / "config.yaml").exists():
            client.log_artifact(run_id, str(best.run_folder / "config.yaml"), "best_trial")
        if (best.run_folder / LABEL_ISSUES).exists():
            hist = T.plot_clean_prob_histogram(
                plots / "clean_prob_histogram.png", best.run_folder / LABEL_ISSUES,
                f"{setting.spec}: best trial {best.trial_id}")
            if hist is not None:
                client.log_artifact(run_id, str(hist), "plots")
        if (best.run_folder / "model_best.pt").exists() and (best.run_folder / "config.yaml").exists():
            entry["model_uri"] = T.log_best_model(store, run_id, best.run_folder)
            client.set_tag(run_id, "knnmix.model_uri", entry["model_uri"])
    client.log_batch(run_id, metrics=metrics)
    client.set_tag(run_id, "knnmix.importances", json.dumps(entry.get("importances"))[:5000])
    client.set_tag(run_id, T.FINALIZED_TAG, "true")
    client.set_terminated(run_id, status="FINISHED")
    return entry


def _log_sweep_params(store: T.Store, run_id: str, space: SearchSpace, folder: SweepFolder) -> None:
    client = store.client()
    T.log_params(client, run_id, {
        "name": space.name, "trials": space.trials, "seed": space.seed, "metric": METRIC, "mode": MODE,
        "noise": ",".join(s.spec for s in space.noise), "base.config": space.base_config,
        **{f"asha.{k}": v for k, v in space.asha.to_dict().items()},
        **{f"params.{k}": p.describe() for k, p in space.params.items()},
        **{f"base.set.{k}": v for k, v in space.base_set.items()},
    })
    client.log_artifact(run_id, str(folder.file(SPACE_FILE)))


def _finalize_sweep(
    space: SearchSpace, folder: SweepFolder, store: T.Store, ml: dict[str, Any], settings: list[dict[str, Any]]
) -> dict[str, Any]:
    summary = {
        "name": space.name,
        "folder": str(folder.root),
        "metric": METRIC,
        "mode": MODE,
        "settings": settings,
        "trials": sum(s["trials"] for s in settings),
        "stopped_early": sum(s["stopped_early"] for s in settings),
        "failed": sum(s["failed"] for s in settings),
        "mlflow": {
            "tracking_uri": store.uri, "artifact_root": store.artifact_root, "experiment": space.experiment_name,
            "experiment_id": ml["experiment_id"], "sweep_run_id": ml["sweep_run_id"], "ui": store.ui_command(),
        },
    }
    folder.file(SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    folder.file(SUMMARY_MD).write_text(summary_markdown(summary))
    client = store.client()
    run_id = ml["sweep_run_id"]
    plots = folder.root / "plots"
    plots.mkdir(exist_ok=True)
    client.log_artifact(run_id, str(T.plot_best_per_noise(
        plots / "best_per_noise.png", settings, f"{space.name}: best trial per noise setting")), "plots")
    client.log_artifact(run_id, str(folder.file(SUMMARY_JSON)))
    client.log_artifact(run_id, str(folder.file(SUMMARY_MD)))
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for s in settings:
        if s["best"]:
            metrics.append(Metric(f"best_val_acc.{s['slug']}", float(s["best"]["val_acc"]), now, 0))
            if s["best"]["test_acc"] is not None:
                metrics.append(Metric(f"best_test_acc.{s['slug']}", float(s["best"]["test_acc"]), now, 0))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, status="FAILED" if summary["failed"] else "FINISHED")
    return summary


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _config_text(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items())


def summary_table(summary: dict[str, Any]) -> str:
    head = ("| noise | trials | stopped early | failed | best val acc (%) | its test acc (%) | best config "
            "(sampled) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for s in summary["settings"]:
        b = s["best"] or {}
        lines.append(
            f"| {s['noise']} | {s['trials']} | {s['stopped_early']} | {s['failed']} | {_pct(b.get('val_acc'))} | "
            f"{_pct(b.get('test_acc'))} | {_config_text(b.get('params', {})) if b else 'n/a'} |"
        )
    lines.append(
        f"\nSelected on the noisy-validation accuracy ({METRIC}, best epoch of each completed trial); the test "
        "accuracy of that epoch is reported only."
    )
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    out = [f"# Sweep {summary['name']}", "", summary_table(summary), ""]
    for s in summary["settings"]:
        out.append(f"## {s['noise']}")
        out.append("")
        b = s["best"]
        if b:
            out.append(f"- best trial `{b['trial_id']}` (epoch {b['epoch']}): val {_pct(b['val_acc'])}%, "
                       f"test {_pct(b['test_acc'])}%, run folder `{b['run_folder']}`")
            out.append(f"- sampled: {_config_text(b['params'])}")
        out.append(f"- trials: {s['trials']} ({s['completed']} completed, {s['stopped_early']} stopped early by "
                   f"ASHA, {s['failed']} failed)")
        for tid, err in (s.get("errors") or {}).items():
            out.append(f"- `{tid}` failed: {err}")
        out.append("")
    m = summary["mlflow"]
    out += [f"MLflow: experiment `{m['experiment']}`, sweep run `{m['sweep_run_id']}`; `{m['ui']}`", ""]
    return "\n".join(out)


def default_out(space: SearchSpace) -> Path:
    return DEFAULT_ROOT / space.name

