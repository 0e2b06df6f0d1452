"""Driver-side MLflow logging of sweeps, and the sweep's plots.

One process writes to the tracking store: the sweep driver. Ray Tune calls :class:`TrialLogger` (a
``ray.tune.Callback``) on the driver for every trial start, reported epoch and end; it logs the trial as an MLflow
run nested under its noise setting's run, which is nested under the sweep's run::

    sweep run (tags knnmix.kind=sweep)                       params: the space; artifacts: space, summary, plots
      noise-setting run (mlflow.parentRunId = sweep run)    artifacts: best trial's label_issues.csv, plots, model
        trial run (mlflow.parentRunId = noise-setting run)  params: resolved config + sampled values;
                                                            metrics per epoch (step = epoch); config, noise summary

The default store is ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlartifacts`` (absolute paths, so a
submitted Ray job, whose working directory is a temporary copy, writes where it was told). Experiments are created
with an absolute ``artifact_location`` for the same reason.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from knnmix import config as C
from knnmix.engine.outputs import BEST_MODEL, CONFIG, LABEL_ISSUES, METRICS, NOISY_LABELS, SUMMARY, read_metrics
from knnmix.errors import KnnmixError

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "knnmix.kind"  # sweep | noise_setting | trial
TRIAL_TAG = "knnmix.trial_id"
OUTCOME_TAG = "knnmix.outcome"  # completed | stopped_early | failed
FINALIZED_TAG = "knnmix.finalized"

#: Keys of a Tune result that are Tune's bookkeeping, not the engine's epoch record.
TUNE_KEYS = frozenset({
    "epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
    "iterations_since_restore", "pid", "done", "trial_id", "date", "hostname", "node_ip", "config",
    "experiment_tag", "checkpoint_path", "checkpoint_dir_name", "should_checkpoint", "timesteps_total",
    "episodes_total", "timesteps_since_restore", "warmup_time",
})


# ----------------------------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class Store:
    """Where MLflow runs go: a tracking URI and, for a local store, the absolute artifact root."""

    uri: str
    artifact_root: str | None  # None: the (remote) server decides

    @classmethod
    def default(cls, cwd: str | Path | None = None) -> Store:
        base = Path(cwd or Path.cwd()).absolute()
        return cls(f"sqlite:///{base / DEFAULT_DB}", str(base / DEFAULT_ARTIFACTS))

    @classmethod
    def from_uri(cls, uri: str) -> Store:
        """``sqlite:///rel.db`` is made absolute; a local database keeps its artifacts beside it."""
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///"):]).expanduser()
            path = path.absolute() if not path.is_absolute() else path
            return cls(f"sqlite:///{path}", str(path.parent / DEFAULT_ARTIFACTS))
        if "://" not in uri:
            raise KnnmixError(
                f"--tracking-uri {uri!r} is not a URI; use e.g. sqlite:///mlflow.db or http://127.0.0.1:5000"
            )
        return cls(uri, None)

    @property
    def is_local(self) -> bool:
        return self.artifact_root is not None

    def ui_command(self) -> str:
        if not self.is_local:
            return f"open {self.uri} in a browser"
        return (
            f"mlflow ui --backend-store-uri {shlex.quote(self.uri)} --default-artifact-root "
            f"{shlex.quote(str(self.artifact_root))} --host 127.0.0.1"
        )

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self.is_local:
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.uri)


def experiment_id(store: Store, name: str) -> str:
    """The id of experiment ``name``, created (with an absolute artifact location for a local store) if missing."""
    client = store.client()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if store.is_local:
        folder = Path(str(store.artifact_root)) / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    return client.create_experiment(name, artifact_location=location)


def _run_alive(client: Any, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - MlflowException for an unknown id
        return False


def start_run(
    store: Store, exp_id: str, name: str, tags: dict[str, str], *, reuse: str | None = None,
    parent: str | None = None,
) -> str:
    """Reuse run ``reuse`` when it still exists, else create one (nested under ``parent``)."""
    client = store.client()
    if _run_alive(client, reuse):
        client.update_run(str(reuse), status="RUNNING")
        return str(reuse)
    all_tags = dict(tags)
    if parent:
        all_tags[PARENT_TAG] = parent
    return client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of 100, skipping ones already logged (params cannot change)."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    items = [Param(k, _param_text(v)) for k, v in params.items() if k not in have]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The engine's numbers in a Tune result or a metrics.jsonl record (``epoch`` and Tune's keys excluded)."""
    out = {}
    for k, v in result.items():
        if k in TUNE_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def log_epochs(client: Any, run_id: str, records: Iterable[dict[str, Any]]) -> list[int]:
    """Log per-epoch metrics with ``step = epoch``; returns the epochs logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics, epochs = [], []
    for r in records:
        step = int(r["epoch"])
        epochs.append(step)
        metrics.extend(Metric(k, v, now, step) for k, v in numeric_metrics(r).items())
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    return epochs


def logged_epochs(client: Any, run_id: str, key: str = "val_acc") -> set[int]:
    return {int(m.step) for m in client.get_metric_history(run_id, key)}


# ----------------------------------------------------------------------------------------------------------------
# Trials: the Tune callback on the driver


class TrialLogger(Callback):
    """Logs every trial of one noise setting as a child run of the setting's MLflow run.

    Picklable (Tune saves it with the experiment): it holds ids and paths, and opens its MLflow client lazily. A
    restored sweep finds each trial's run again by its ``knnmix.trial_id`` tag, so a trial is never logged twice:
    a finished trial's run is left alone, a restarted trial continues its run from the epochs not yet logged.
    """

    def __init__(
        self, *, store: Store, experiment_id: str, parent_run_id: str, noise: str, trials_dir: str,
        sampled_keys: Sequence[str],
    ) -> None:
        self.store = store
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.noise = noise
        self.trials_dir = trials_dir
        self.sampled_keys = list(sampled_keys)
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id
        self._epochs: dict[str, set[int]] = {}  # trial id -> epochs logged
        self._params_done: set[str] = set()
        self._done: set[str] = set()
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.store.client()
        return self._client

    # Tune's callback state (saved with the experiment)
    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self._runs), "done": sorted(self._done)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._runs.update(state.get("runs", {}))
        self._done.update(state.get("done", []))

    def run_folder(self, trial_id: str) -> Path:
        return Path(self.trials_dir) / trial_id

    def _find_run(self, trial_id: str) -> Any:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=5,
        )
        return found[0] if found else None

    def run_id(self, trial: Any) -> str | None:
        """The trial's run (found or created); ``None`` when the trial's run is already complete."""
        tid = trial.trial_id
        if tid in self._done:
            return None
        if tid not in self._runs:
            existing = self._find_run(tid)
            if existing is not None:
                if existing.data.tags.get(OUTCOME_TAG):
                    self._done.add(tid)
                    return None
                self._runs[tid] = existing.info.run_id
        if tid not in self._runs:
            sampled = {k: v for k, v in trial.config.items() if k in self.sampled_keys}
            tags = {
                KIND_TAG: "trial", TRIAL_TAG: tid, "knnmix.noise": self.noise,
                "knnmix.run_folder": str(self.run_folder(tid)),
                "mlflow.note.content": "sampled: " + ", ".join(f"{k}={v}" for k, v in sampled.items()),
            }
            run = self.client.create_run(
                self.experiment_id, run_name=tid, tags={**tags, PARENT_TAG: self.parent_run_id}
            )
            self._runs[tid] = run.info.run_id
            log_params(self.client, run.info.run_id, {f"sampled.{k}": v for k, v in sampled.items()})
        rid = self._runs[tid]
        if tid not in self._epochs:
            self._epochs[tid] = logged_epochs(self.client, rid)
        return rid

    def _log_config(self, trial: Any, rid: str) -> None:
        if trial.trial_id in self._params_done:
            return
        path = self.run_folder(trial.trial_id) / CONFIG
        if not path.exists():
            return
        log_params(self.client, rid, C.flatten(C.load(path)))
        self._params_done.add(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self.run_id(trial)
        if rid is None or "epoch" not in result:
            return
        self._log_config(trial, rid)
        epoch = int(result["epoch"])
        if epoch not in self._epochs[trial.trial_id]:
            log_epochs(self.client, rid, [result])
            self._epochs[trial.trial_id].add(epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=True)

    def _finish(self, trial: Any, *, failed: bool) -> None:
        rid = self.run_id(trial)
        if rid is None:
            return
        tid = trial.trial_id
        folder = self.run_folder(tid)
        self._log_config(trial, rid)
        last = int((trial.last_result or {}).get("epoch", 0) or 0)
        # Epochs the driver did not see (reported while it was down): from the run folder, up to the last epoch
        # Tune saw (a stopped trial may have written one more line before it was killed).
        if (folder / METRICS).exists():
            missing = [r for r in read_metrics(folder / METRICS)
                       if int(r["epoch"]) <= last and int(r["epoch"]) not in self._epochs[tid]]
            self._epochs[tid].update(log_epochs(self.client, rid, missing))
        completed = (folder / SUMMARY).exists() and not failed
        outcome = "failed" if failed else ("completed" if completed else "stopped_early")
        for name in (CONFIG,):
            if (folder / name).exists():
                self.client.log_artifact(rid, str(folder / name))
        if (folder / NOISY_LABELS).exists():
            self.client.log_dict(rid, noise_summary(folder / NOISY_LABELS), "noise_summary.json")
        records = [r for r in read_metrics(folder / METRICS)] if (folder / METRICS).exists() else []
        records = [r for r in records if int(r["epoch"]) <= max(last, 0)] or records
        vals = [(r["val_acc"], r["epoch"], r.get("test_acc")) for r in records if r.get("val_acc") is not None]
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = [Metric("epochs_run", float(last or len(records)), now, 0)]
        if vals:
            best = max(vals, key=lambda t: (t[0], -t[1]))
            final.append(Metric("best_val_acc", float(best[0]), now, 0))
            if best[2] is not None:
                final.append(Metric("test_acc_at_best_val", float(best[2]), now, 0))
        self.client.log_batch(rid, metrics=final)
        self.client.set_tag(rid, OUTCOME_TAG, outcome)
        self.client.set_terminated(rid, status="FAILED" if failed else "FINISHED")
        self._done.add(tid)


# ----------------------------------------------------------------------------------------------------------------
# Artifacts


def noise_summary(npz_path: str | Path) -> dict[str, Any]:
    """The noisy labels of a run in a few numbers: spec, measured rate, transition matrix, split sizes."""
    import numpy as np

    with np.load(npz_path) as z:
        data = {k: z[k] for k in z.files}
    out: dict[str, Any] = {
        "spec": str(data["spec"]),
        "noise_rate": float(data["noise_rate"]),
        "num_train": int(len(data["train_rows"])),
        "num_val": int(len(data["val_rows"])),
        "transition": np.round(data["transition"].astype(float), 4).tolist(),
    }
    if "true_labels" in data:
        noisy, true = data["noisy_labels"], data["true_labels"]
        rows = data["train_rows"]
        out["train_noise_rate"] = float(np.mean(noisy[rows] != true[rows])) if len(rows) else None
        out["val_noise_rate"] = float(np.mean(noisy[data["val_rows"]] != true[data["val_rows"]])) if len(
            data["val_rows"]) else None
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(path: Path, curves: dict[str, list[dict[str, Any]]], best: str | None, title: str) -> Path:
    """Noisy-validation accuracy per epoch of every trial (the best one bold; its test accuracy dashed) and the
    training loss."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for tid, recs in curves.items():
        ep = [r["epoch"] for r in recs if r.get("val_acc") is not None]
        va = [r["val_acc"] for r in recs if r.get("val_acc") is not None]
        lw, alpha = (2.5, 1.0) if tid == best else (1.0, 0.6)
        ax.plot(ep, va, "o-", ms=3, lw=lw, alpha=alpha, label=tid + (" (best)" if tid == best else ""))
        ax2.plot([r["epoch"] for r in recs], [r["train_loss"] for r in recs], "o-", ms=3, lw=lw, alpha=alpha)
        if tid == best:
            ax.plot([r["epoch"] for r in recs], [r.get("test_acc") for r in recs], "k--", lw=1.2,
                    label=f"{tid} test (reported only)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("noisy-validation accuracy (%)")
    ax.legend(fontsize=7)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("training loss")
    from matplotlib.ticker import MaxNLocator

    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_label_issues(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def plot_clean_prob_histogram(path: Path, label_issues_csv: Path, title: str) -> Path | None:
    """Histogram of the final clean probabilities, split by truly clean / truly noisy given labels (where the
    truth is known: the ``true_label`` column); ``None`` when it is not."""
    rows = read_label_issues(label_issues_csv)
    if not rows or "true_label" not in rows[0]:
        return None
    clean = [float(r["clean_prob"]) for r in rows if r["true_label"] != "" and r["given_label"] == r["true_label"]]
    noisy = [float(r["clean_prob"]) for r in rows if r["true_label"] != "" and r["given_label"] != r["true_label"]]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [i / 20 for i in range(21)]
    ax.hist(clean, bins=bins, alpha=0.6, label=f"truly clean labels ({len(clean)})")
    ax.hist(noisy, bins=bins, alpha=0.6, label=f"truly noisy labels ({len(noisy)})")
    ax.set_xlabel("clean probability of the given label")
    ax.set_ylabel("training samples")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_best_per_noise(path: Path, settings: list[dict[str, Any]], title: str) -> Path:
    """The sweep's best noisy-validation accuracy per noise setting, with the test accuracy of that trial."""
    plt = _plt()
    names = [s["noise"] for s in settings]
    val = [(s.get("best") or {}).get("val_acc") or 0.0 for s in settings]
    test = [(s.get("best") or {}).get("test_acc") or 0.0 for s in settings]
    x = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names)), 4))
    ax.bar([i - 0.2 for i in x], val, width=0.4, label="best noisy-validation acc (selected on)")
    ax.bar([i + 0.2 for i in x], test, width=0.4, label="its test acc (reported only)")
    for i, (v, t) in enumerate(zip(val, test)):
        ax.text(i - 0.2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.text(i + 0.2, t, f"{t:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_importances(path: Path, importances: dict[str, float], title: str) -> Path:
    plt = _plt()
    keys = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(keys) + 1.5))
    ax.barh(keys, [importances[k] for k in keys])
    ax.set_xlabel("importance (fANOVA) for the last noisy-validation accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def param_importances(
    distributions: dict[str, Any], trials: list[tuple[dict[str, Any], float]], seed: int
) -> dict[str, float]:
    """Optuna's fANOVA importances of the searched keys for the objective Optuna was told (the last reported
    noisy-validation accuracy of each trial). Raises ``ValueError`` when there is too little to go on."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for params, value in trials:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        raise ValueError(f"{len(complete)} finished trial(s): importances need at least 2")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def log_best_model(store: Store, run_id: str, run_folder: Path, name: str = "best_model") -> str:
    """Log the trial's ``model_best.pt`` with ``mlflow.pytorch`` under run ``run_id``; returns the model URI."""
    import mlflow
    import mlflow.pytorch
    import torch

    from knnmix.engine.splits import build_splits
    from knnmix.models import build_model
    from knnmix.scale.ray_env import package_dir

    cfg = C.load(run_folder / CONFIG)
    splits = build_splits(cfg)
    c, h, _ = splits.train.source.shape
    model = build_model(cfg.model.name, splits.num_classes, c, h)
    model.load_state_dict(torch.load(run_folder / BEST_MODEL, map_location="cpu", weights_only=True))
    model.eval()
    mlflow.set_tracking_uri(store.uri)
    quiet = logging.getLogger("mlflow.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning about pickled models: the file is ours
    with mlflow.start_run(run_id=run_id):
        # The network returns (logits, features), which MLflow's "pt2" export cannot describe: the pickled module,
        # with the knnmix package as code so that it loads where knnmix is not installed.
        info = mlflow.pytorch.log_model(
            model, name=name, serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"], code_paths=[str(package_dir())],
        )
    quiet.setLevel(level)
    return str(info.model_uri)


def label_issue_artifacts(folder: Path) -> list[Path]:
    return [p for p in (folder / LABEL_ISSUES, folder / "label_issues.png") if p.exists()]
