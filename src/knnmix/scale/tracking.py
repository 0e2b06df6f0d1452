"""MLflow logging of sweeps and runs, and the sweep's plots. One process writes to the store: the driver.

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` with artifacts in
``<cwd>/mlartifacts`` (absolute paths, so a submitted Ray job, whose working directory is a temporary copy, writes
where it was told). Experiments are tagged as model development (``mlflow.experimentKind``), so the MLflow UI opens
them on the runs table. A sweep is three levels of nested runs: the sweep, one per noise setting, one per trial (what
each holds: docs/sweeps.md). Every run carries MLflow's own source, user and git tags (``resolve_tags``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from knnmix import config as C
from knnmix.engine.checkpoint import (BEST_MODEL, CONFIG, LABEL_ISSUES, LABEL_ISSUES_PLOT, METRICS, NOISY_LABELS,
                                      RUN_INFO, SUMMARY, read_metrics)
from knnmix.errors import KnnmixError
from knnmix.plots import plot_best_per_noise, plot_clean_prob_histogram, plot_importances, plot_learning_curves
from knnmix.scale.ray_env import package_dir
from knnmix.spaces import METRIC, SETTING_KEY

DEFAULT_DB, DEFAULT_ARTIFACTS = "mlflow.db", "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "knnmix.kind"  # sweep | noise_setting | trial | train
TRIAL_TAG = "knnmix.trial_id"
OUTCOME_TAG = "knnmix.outcome"  # completed | stopped_early | failed
FINALIZED_TAG = "knnmix.finalized"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI's model-training view


@dataclass(frozen=True)
class Store:
    """Where MLflow runs go: a tracking URI and, for a local store, the absolute artifact root."""

    uri: str
    artifact_root: str | None  # None: the (remote) server decides

    @classmethod
    def default(cls, cwd: str | Path | None = None) -> Store:
        return cls.from_uri(f"sqlite:///{Path(cwd or Path.cwd()).absolute() / DEFAULT_DB}")

    @classmethod
    def resolve(cls, uri: str | None = None) -> Store:
        """``uri``, else ``MLFLOW_TRACKING_URI``, else the default store in the working directory."""
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        return cls.from_uri(uri) if uri else cls.default()

    @classmethod
    def from_uri(cls, uri: str) -> Store:
        """``sqlite:///rel.db`` is made absolute; a local database keeps its artifacts beside it; a bare folder
        (MLflow's file store) is refused, as MLflow 3 deprecates it."""
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///"):]).expanduser().absolute()
            return cls(f"sqlite:///{path}", str(path.parent / DEFAULT_ARTIFACTS))
        if "://" not in uri:
            raise KnnmixError(f"tracking URI {uri!r} is not a URI; use e.g. sqlite:///mlflow.db or "
                              "http://127.0.0.1:5000")
        return cls(uri, None)

    @property
    def is_local(self) -> bool:
        return self.artifact_root is not None

    def ui_command(self) -> str:
        if not self.is_local:
            return f"open {self.uri} in a browser"
        return (f"mlflow ui --backend-store-uri {shlex.quote(self.uri)} --default-artifact-root "
                f"{shlex.quote(str(self.artifact_root))} --host 127.0.0.1")

    def experiment_url(self, experiment_id: str) -> str:
        """The experiment's runs table in the UI's model-training view (MLflow 3.17's UI opens every experiment on its
        GenAI overview unless the link asks for ``workflowType=machine_learning``)."""
        base = "http://127.0.0.1:5000" if self.is_local else self.uri.rstrip("/")
        return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self.is_local:
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.uri)


def experiment_id(store: Store, name: str) -> str:
    """The id of experiment ``name`` (created, with an absolute artifact location for a local store, if missing),
    tagged for the UI's model-training view."""
    client = store.client()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None
        if store.is_local:
            folder = Path(str(store.artifact_root)) / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        exp_id = client.create_experiment(name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    client.set_experiment_tag(exp_id, *EXPERIMENT_KIND)
    return exp_id


def create_run(store: Store, exp_id: str, name: str, tags: dict[str, str], *, parent: str | None = None,
               reuse: str | None = None) -> str:
    """Reuse run ``reuse`` when it still exists, else a new run (nested under ``parent``) with MLflow's default
    source, user and git tags."""
    from mlflow.tracking.context.registry import resolve_tags

    client = store.client()
    if reuse:
        try:
            if client.get_run(reuse).info.lifecycle_stage == "active":
                client.update_run(reuse, status="RUNNING")
                return reuse
        except Exception:  # noqa: BLE001 - MlflowException for an unknown id
            pass
    all_tags = resolve_tags({**tags, **({PARENT_TAG: parent} if parent else {})})
    return client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id


def find_trial_run(client: Any, exp_id: str, trial_id: str) -> Any:
    found = client.search_runs([exp_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
    return found[0] if found else None


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params, skipping ones already logged (params cannot change); ``log_batch`` splits them into batches."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[Param(k, (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000])
                                     for k, v in params.items() if k not in have])


def log_files(client: Any, run_id: str, folder: Path, names: Iterable[str], artifact_path: str | None = None) -> None:
    for name in names:
        if (folder / name).exists():
            client.log_artifact(run_id, str(folder / name), artifact_path)


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The engine's numbers in a Tune result or a metrics.jsonl record (``epoch``, Tune's keys, ``None`` left out)."""
    skip = {"epoch", "done", "trial_id", "experiment_tag", "should_checkpoint", *AUTO_RESULT_KEYS}
    return {k: float(v) for k, v in result.items() if k not in skip and not isinstance(v, bool)
            and isinstance(v, (int, float)) and math.isfinite(float(v))}


def log_epochs(client: Any, run_id: str, records: Iterable[dict[str, Any]]) -> list[int]:
    """Log per-epoch metrics with ``step = epoch``; returns the epochs logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics, epochs = [], []
    for r in records:
        epochs.append(int(r["epoch"]))
        metrics.extend(Metric(k, v, now, int(r["epoch"])) for k, v in numeric_metrics(r).items())
    client.log_batch(run_id, metrics=metrics)
    return epochs


def log_totals(client: Any, run_id: str, values: dict[str, float | None]) -> None:
    """Log a run's totals (one value per metric, at step 0; ``None`` values are not logged)."""
    log_epochs(client, run_id, [{**values, "epoch": 0}])


def log_run_folder(client: Any, run_id: str, folder: Path) -> None:
    """A run folder's config as params, and the training data as the run's dataset input: the data set with its
    noisy labels (digest of the labels the run trained on), so the runs table's Dataset column names what each run
    saw."""
    import mlflow.data
    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    if not (folder / CONFIG).exists():
        return
    cfg = C.load(folder / CONFIG)
    log_params(client, run_id, C.flatten(cfg))
    client.log_artifact(run_id, str(folder / CONFIG))
    if not (folder / NOISY_LABELS).exists():
        return
    with np.load(folder / NOISY_LABELS) as z:
        labels = z["noisy_labels"][z["train_rows"]]
    source = CodeDatasetSource({"knnmix.dataset": cfg.data.name, "knnmix.noise": cfg.noise.spec,
                                "data.root": str(cfg.data.root or "default")})
    ds = mlflow.data.from_numpy(labels, source=source, name=f"{cfg.data.name} [{cfg.noise.spec}]")
    context = InputTag("mlflow.data.context", "train")
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), [context])])


# ----------------------------------------------------------------------------------------------------------------
# Sweeps


def last_epoch(trial: Any) -> int:
    """The epoch of the last result Tune saw of ``trial`` (0 before its first)."""
    return int((trial.last_result or {}).get("epoch", 0) or 0)


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


def open_sweep_runs(store: Store, space: Any, settings: list[Any], ml: dict[str, Any], space_file: Path) -> dict:
    """The experiment, the sweep's run and one run per noise setting; ids kept in ``ml`` (the sweep state)."""
    ml["experiment_id"] = experiment_id(store, space.experiment_name)
    tags = {KIND_TAG: "sweep", **({"mlflow.note.content": space.description} if space.description else {})}
    ml["sweep_run_id"] = create_run(store, ml["experiment_id"], space.name, tags, reuse=ml.get("sweep_run_id"))
    runs = ml.setdefault("settings", {})
    for s in settings:
        tags = {KIND_TAG: "noise_setting", "knnmix.noise": s.spec}
        runs[s.slug] = create_run(store, ml["experiment_id"], s.spec, tags, parent=ml["sweep_run_id"],
                                  reuse=runs.get(s.slug))
    client = store.client()
    log_params(client, ml["sweep_run_id"], {
        "name": space.name, "trials": space.trials, "seed": space.seed, "metric": space.metric,
        "noise": ",".join(s.spec for s in settings), "base.config": space.base.config,
        **{f"asha.{k}": v for k, v in space.to_dict()["asha"].items()},
        **{f"params.{k}": p.describe() for k, p in space.params.items()},
        **{f"base.set.{k}": v for k, v in space.base.set.items()},
    })
    client.log_artifact(ml["sweep_run_id"], str(space_file))
    return ml


def run_name(spec: str, sampled: dict[str, Any]) -> str:
    """A trial's run name: its noise setting and sampled values, e.g. ``symmetric:0.5 k=3 temperature=0.71``."""
    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join([spec, *(f"{k.rsplit('.', 1)[-1]}={fmt(v)}" for k, v in sampled.items())])[:250]


class TrialLogger(Callback):
    """Logs every trial as an MLflow run nested under its noise setting's run (a Tune callback on the driver).

    Picklable (Tune saves it with the experiment). A restored sweep finds each trial's run again by its
    ``knnmix.trial_id`` tag, so a trial is never logged twice.
    """

    def __init__(self, *, store: Store, experiment_id: str, parents: dict[str, str], specs: dict[str, str],
                 root: str, total: int, echo: Callable[[str], None] | None = None) -> None:
        self.store, self.experiment_id, self.parents, self.specs = store, experiment_id, parents, specs
        self.root, self.total, self.echo = root, total, echo
        self._runs: dict[str, str] = {}
        self._epochs: dict[str, set[int]] = {}
        self._done: set[str] = set()
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "echo": None}

    @property
    def client(self) -> Any:
        """One client for the callback's life (it is used several times per trial result)."""
        if self._client is None:
            self._client = self.store.client()
        return self._client

    def folder(self, trial: Any) -> Path:
        return Path(self.root) / trial.config[SETTING_KEY] / "trials" / trial.trial_id

    def name(self, trial: Any) -> str:
        return run_name(self.specs[trial.config[SETTING_KEY]], sampled_values(trial.config))

    def run_id(self, trial: Any) -> str | None:
        """The trial's run (found or created); ``None`` once the trial's run is complete."""
        tid = trial.trial_id
        if tid in self._done:
            return None
        if tid not in self._runs:
            found = find_trial_run(self.client, self.experiment_id, tid)
            if found and found.data.tags.get(OUTCOME_TAG):
                self._done.add(tid)
                return None
            self._runs[tid] = found.info.run_id if found else self._create_run(trial)
            self._epochs[tid] = {int(m.step) for m in self.client.get_metric_history(self._runs[tid], METRIC)}
        return self._runs[tid]

    def _create_run(self, trial: Any) -> str:
        slug = trial.config[SETTING_KEY]
        tags = {KIND_TAG: "trial", TRIAL_TAG: trial.trial_id, "knnmix.noise": self.specs[slug],
                "knnmix.run_folder": str(self.folder(trial))}
        rid = create_run(self.store, self.experiment_id, self.name(trial), tags, parent=self.parents[slug])
        log_params(self.client, rid, {f"sampled.{k}": v for k, v in sampled_values(trial.config).items()})
        return rid

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def log_new_epochs(self, trial: Any, rid: str, records: list[dict[str, Any]]) -> None:
        """Log the epochs of ``records`` not logged yet; before the first, the run folder's config and data."""
        logged = self._epochs[trial.trial_id]
        if not logged:
            log_run_folder(self.client, rid, self.folder(trial))
        new = [r for r in records if int(r["epoch"]) not in logged]
        if new:
            logged.update(log_epochs(self.client, rid, new))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self.run_id(trial)
        if rid is not None and "epoch" in result:
            self.log_new_epochs(trial, rid, [result])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=True)

    def _finish(self, trial: Any, *, failed: bool) -> None:
        rid = self.run_id(trial)
        if rid is None:
            return
        folder, last = self.folder(trial), last_epoch(trial)
        records = reported(folder, last)
        self.log_new_epochs(trial, rid, records)  # with the epochs reported while the driver was down
        outcome = "failed" if failed else ("completed" if (folder / SUMMARY).exists() else "stopped_early")
        best = best_record(records) or {}
        log_totals(self.client, rid, {"epochs_run": last, "best_val_acc": best.get(METRIC),
                                      "test_acc_at_best_val": best.get("test_acc")})
        self.client.set_tag(rid, OUTCOME_TAG, outcome)
        self.client.set_terminated(rid, status="FAILED" if failed else "FINISHED")
        self._done.add(trial.trial_id)
        if self.echo:
            v = f"{best[METRIC]:.2f}" if best else "n/a"
            self.echo(f"  trial {len(self._done):>3}/{self.total} {outcome:<13} after {last:>3} epochs, best val "
                      f"{v:>6}: {self.name(trial)}")


def finish_setting_run(store: Store, ml: dict[str, Any], setting: Any, entry: dict[str, Any], trials: list,
                       best: Any, plots: Path, optuna_storage: str, register: str | None) -> None:
    """A noise setting's run: learning curves, importances from its Optuna study, the best trial's audit, the best
    model (logged on the best trial's run, with ``mlflow.pytorch``). Done once: a resumed sweep does not log
    twice. Adds to the setting's summary ``entry`` the best trial's run id, ``importances`` and ``model_uri``."""
    client = store.client()
    run_id = ml["settings"][setting.slug]
    run = client.get_run(run_id)
    if best is not None:
        found = find_trial_run(client, ml["experiment_id"], best.trial_id)
        entry["best_mlflow_run_id"] = entry["best"]["mlflow_run_id"] = found.info.run_id if found else None
    if run.data.tags.get(FINALIZED_TAG) == "true":
        entry["model_uri"] = run.data.tags.get("knnmix.model_uri")
        entry["importances"] = json.loads(run.data.tags.get("knnmix.importances", "null") or "null")
        return
    plots.mkdir(parents=True, exist_ok=True)
    log_params(client, run_id, {"noise.spec": setting.spec, **{f"set.{k}": v for k, v in setting.overrides.items()}})
    curves = {t.trial_id: t.records for t in trials if t.records}
    if curves:
        client.log_artifact(run_id, str(plot_learning_curves(plots / "learning_curves.png", curves,
                                                              best.trial_id if best else None, setting.spec)), "plots")
    entry["importances"] = study_importances(optuna_storage, entry["study"])
    if entry["importances"]:
        client.log_dict(run_id, entry["importances"], "param_importances.json")
        client.log_artifact(run_id, str(plot_importances(plots / "param_importances.png", entry["importances"],
                                                          f"{setting.spec}: parameter importances")), "plots")
    totals = {k: entry[k] for k in ("trials", "completed", "stopped_early", "failed")}
    if best is not None:
        client.set_tag(run_id, "knnmix.best_trial", best.trial_id)
        totals.update(best_val_acc=entry["best"]["val_acc"], best_test_acc=entry["best"]["test_acc"])
        log_files(client, run_id, best.run_folder, (LABEL_ISSUES, LABEL_ISSUES_PLOT, CONFIG), "best_trial")
        hist = plot_clean_prob_histogram(plots / "clean_prob_histogram.png", best.run_folder / LABEL_ISSUES,
                                         f"{setting.spec}: best trial {best.trial_id}")
        if hist is not None:
            client.log_artifact(run_id, str(hist), "plots")
        if entry["best_mlflow_run_id"]:
            client.set_tag(entry["best_mlflow_run_id"], "knnmix.best", "true")
            if (best.run_folder / BEST_MODEL).exists():
                entry["model_uri"] = log_model(store, entry["best_mlflow_run_id"], best.run_folder / BEST_MODEL,
                                               register=register)
                client.set_tag(run_id, "knnmix.model_uri", entry["model_uri"])
    log_totals(client, run_id, totals)
    client.set_tag(run_id, "knnmix.importances", json.dumps(entry["importances"])[:5000])
    client.set_tag(run_id, FINALIZED_TAG, "true")
    client.set_terminated(run_id, status="FINISHED")


def study_importances(storage: str, name: str) -> dict[str, float] | None:
    """Optuna's fANOVA importances of the searched keys in the setting's own study; ``None`` with too few trials."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (ValueError, RuntimeError, KeyError):
        return None


def finish_sweep_run(store: Store, ml: dict[str, Any], summary: dict[str, Any], files: list[Path], plots: Path,
                     title: str) -> None:
    client = store.client()
    run_id = ml["sweep_run_id"]
    plots.mkdir(exist_ok=True)
    client.log_artifact(run_id, str(plot_best_per_noise(plots / "best_per_noise.png", summary["settings"], title)),
                        "plots")
    for f in files:
        client.log_artifact(run_id, str(f))
    log_totals(client, run_id, {f"best_{key}.{s['slug']}": s["best"][key] for s in summary["settings"] if s["best"]
                                for key in ("val_acc", "test_acc")})
    client.set_terminated(run_id, status="FAILED" if summary["failed"] else "FINISHED")


# ----------------------------------------------------------------------------------------------------------------
# Models and single runs


def log_model(store: Store, run_id: str, weights: Path, *, register: str | None = None) -> str:
    """Log a weights file's network under run ``run_id`` with ``mlflow.pytorch`` (a logits-only module, with an
    input example from its constructor arguments, from which MLflow infers the signature); returns the model URI."""
    import mlflow
    import mlflow.pytorch
    import torch

    from knnmix.engine.checkpoint import load_model, safe_load
    from knnmix.models import LogitsOnly

    args = safe_load(weights)["model_args"]
    model = LogitsOnly(load_model(weights)).eval()
    example = torch.zeros(2, args["in_channels"], args["image_size"], args["image_size"]).numpy()
    # The fluent API needs the global URI; setting it also exports MLFLOW_TRACKING_URI to this process, which knnmix
    # reads as the user's choice, so both are put back afterwards (a later run must not log into this store).
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store.uri)
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model, name="model", input_example=example, serialization_format="pickle",
                code_paths=[str(package_dir())], registered_model_name=register,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                metadata={"model_args": args, "weights": str(weights)},
            )
    finally:
        quiet.setLevel(level)
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets it
    return str(info.model_uri)


def log_training_run(store: Store, folder: Path, summary: dict[str, Any], *, experiment: str = "knnmix-train",
                     register: str | None = None) -> str:
    """Log a finished run folder (``knnmix train --tracking-uri``): config, per-epoch metrics, dataset, summary,
    label audit and the validation-selected model. Returns the run id."""
    client = store.client()
    cfg = C.load(folder / CONFIG)
    rid = create_run(store, experiment_id(store, experiment),
                     f"{cfg.method.name} {cfg.data.name} {cfg.noise.spec} seed {cfg.seed}",
                     {KIND_TAG: "train", "knnmix.run_folder": str(folder.absolute()),
                      "mlflow.source.git.commit": str(summary.get("commit", ""))})
    log_run_folder(client, rid, folder)
    log_epochs(client, rid, read_metrics(folder / METRICS))
    log_files(client, rid, folder, (SUMMARY, LABEL_ISSUES, LABEL_ISSUES_PLOT, RUN_INFO))
    if (folder / BEST_MODEL).exists():
        log_model(store, rid, folder / BEST_MODEL, register=register)
    client.set_terminated(rid, status="FINISHED")
    return rid
