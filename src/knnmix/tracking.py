"""MLflow logging of runs, with no Ray: the store, experiments, runs, params, per-epoch metrics, the training data
as a dataset input, and a weights file's network as an ``mlflow.pytorch`` model. ``knnmix train --tracking-uri``
logs a finished run folder here (:func:`log_training_run`); a sweep's Tune callback builds on it
(:mod:`knnmix.scale.sweep_mlflow`).

The store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` with artifacts in
``<cwd>/mlartifacts`` (absolute paths, so a submitted Ray job, whose working directory is a temporary copy, writes
where it was told). Experiments are tagged as model development (``mlflow.experimentKind``), so the MLflow UI opens
them on the runs table. Every run carries MLflow's own source and user tags (``resolve_tags``) and knnmix's git
commit.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, redirect_stderr, suppress
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from knnmix import config as C
from knnmix.engine.checkpoint import (BEST_MODEL, CONFIG, LABEL_ISSUES, LABEL_ISSUES_PLOT, METRICS, NOISY_LABELS,
                                      RUN_INFO, SUMMARY, predictor, read_metrics, safe_load)
from knnmix.errors import KnnmixError, one_line
from knnmix.provenance import TIME_FORMAT, git_commit, package_dir

DEFAULT_DB, DEFAULT_ARTIFACTS = "mlflow.db", "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "knnmix.kind"  # sweep | noise_setting | trial | train
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # the UI's model-training view


#: The URI schemes of MLflow's own tracking stores (mlflow.tracking._tracking_service.utils), and the entry-point
#: group through which plugins add more.
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")  # file: see from_uri
TRACKING_PLUGINS = "mlflow.tracking_store"
#: SQLAlchemy's database drivers (the module a URI needs) and the package that installs each.
DB_DRIVERS = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
              "pymysql": "PyMySQL", "pyodbc": "pyodbc", "pymssql": "pymssql"}
TRAIN_EXPERIMENT = "knnmix-train"  # where knnmix train and compare log their runs
MODEL_EPOCH_TAG = "knnmix.model_epoch"  # the epoch whose weights a train run's logged model holds
DIRTY_TAG = "knnmix.git_dirty"  # "true": the checkout had uncommitted changes to tracked files


@dataclass(frozen=True)
class Store:
    """Where MLflow runs go: a tracking URI and, for a local store, the absolute artifact root."""

    uri: str
    artifact_root: str | None  # None: the (remote) server decides

    @classmethod
    def default(cls, cwd: str | Path | None = None) -> Store:
        return cls._sqlite(Path(cwd or Path.cwd()).absolute() / DEFAULT_DB)

    @classmethod
    def resolve(cls, uri: str | None = None) -> Store:
        """``uri``, else ``MLFLOW_TRACKING_URI``, else the default store in the working directory."""
        uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        return cls.from_uri(uri) if uri else cls.default()

    @classmethod
    def from_uri(cls, uri: str) -> Store:
        """``sqlite:///rel.db`` is made absolute; a local database keeps its artifacts beside it; a bare folder
        (MLflow's file store) is refused, as MLflow 3 deprecates it. A SQLite URI is read as SQLAlchemy reads it:
        what follows '?' is its query (kept), '%XX' an escaped character."""
        if uri.startswith("sqlite:///"):
            rest = uri[len("sqlite:///"):]
            database, sep, query = rest.partition("?")
            if "/" in query:  # sqlite:///runs?1/mlflow.db: a path, not a query
                database, sep, query = rest, "", ""
            return cls._sqlite(Path(unquote(database)).expanduser().absolute(), sep + query)
        if uri.startswith("file:") or ":" not in uri:  # a folder: MLflow 3 keeps its file store only behind a flag
            raise KnnmixError(f"tracking URI {uri!r}: a folder (MLflow's deprecated file store) is not supported; use "
                              "e.g. sqlite:///mlflow.db or http://127.0.0.1:5000")
        if "://" not in uri:
            raise KnnmixError(f"tracking URI {uri!r} is not a URI; use e.g. sqlite:///mlflow.db or "
                              "http://127.0.0.1:5000")
        scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()  # postgresql+psycopg2://: a database and its driver
        if scheme not in TRACKING_SCHEMES and scheme not in {e.name for e in entry_points(group=TRACKING_PLUGINS)}:
            raise KnnmixError(f"tracking URI {uri!r}: MLflow has no tracking store for {scheme + '://'!r}; use e.g. "
                              f"sqlite:///mlflow.db or http://127.0.0.1:5000 (schemes: {', '.join(TRACKING_SCHEMES)})")
        return cls(uri, None)

    @classmethod
    def _sqlite(cls, path: Path, query: str = "") -> Store:
        if "?" in str(path) or "%" in str(path):  # e.g. the default store in a working directory named 'a?b'
            raise KnnmixError(f"MLflow's SQLite store cannot be {path}: MLflow reads '?' and '%' in a database path "
                              "as URL syntax (with a '?' the runs went to a database named after the path's head); "
                              "pass --tracking-uri sqlite:////another/folder/mlflow.db or run from another folder")
        return cls(f"sqlite:///{path}{query}", str(path.parent / DEFAULT_ARTIFACTS))

    @property
    def is_local(self) -> bool:
        return self.artifact_root is not None

    def ui_command(self) -> str:
        """The command that serves a local store's UI; without MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLflow 3.17's
        server also starts ten job-runner processes (docs/sweeps.md)."""
        if not self.is_local:
            return f"open {self.uri} in a browser"
        return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri {shlex.quote(self.uri)} "
                "--default-artifact-root "
                f"{shlex.quote(str(self.artifact_root))} --host 127.0.0.1")

    def experiment_url(self, experiment_id: str) -> str:
        """The experiment's runs table in the UI's model-training view (MLflow 3.17's UI opens every experiment on its
        GenAI overview unless the link asks for ``workflowType=machine_learning``)."""
        base = "http://127.0.0.1:5000" if self.is_local else self.uri.rstrip("/")
        return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self.is_local:
            Path(str(self.artifact_root)).parent.mkdir(parents=True, exist_ok=True)  # the database's folder
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


def reach(store: Store, experiment: str, register: str | None = None) -> str:
    """Ask the store for experiment ``experiment`` (created if missing) before any training, and MLflow whether it
    takes ``register`` as a model name: a store that does not answer or a name it refuses is a one-line error now,
    not a traceback once the training is done. Returns the experiment's id."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES as RETRIES
    from mlflow.exceptions import MlflowException

    # MLflow retries a refused connection for about four minutes by default; this question is asked 3 times (about
    # 15 s) unless the user chose how often
    patient = RETRIES.is_set()
    if not patient:
        RETRIES.set(3)
    try:
        exp_id = experiment_id(store, experiment)
    except ImportError as exc:  # postgresql:// or mysql:// without its driver: not a server that does not answer
        if (package := DB_DRIVERS.get(exc.name or "")) is None:
            raise KnnmixError(f"tracking URI {store.uri!r} cannot be used here: {one_line(exc)}") from None
        raise KnnmixError(f"tracking URI {store.uri!r} needs the database driver {exc.name!r}, which is not installed "
                          f"here (pip install {package})") from None
    except Exception as exc:  # MLflow's, SQLAlchemy's or the OS's: which one depends on the store
        raise KnnmixError(f"tracking URI {store.uri!r} does not answer: {one_line(exc)}") from None
    finally:
        if not patient:
            RETRIES.unset()
    if register is not None:
        try:
            store.client().get_registered_model(register)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":  # a name MLflow's registry refuses
                raise KnnmixError(f"--register {register!r}: {one_line(exc)}") from None
    return exp_id


def commit_tags(commit: str) -> dict[str, str]:
    """MLflow's git tag for a commit as :func:`~knnmix.provenance.git_commit` writes it: the bare sha, which the UI
    shows and links, and :data:`DIRTY_TAG` for ``<sha>-dirty``; no tag for an unknown commit."""
    sha = commit.removesuffix("-dirty")
    if sha in ("", "unknown"):
        return {}
    return {"mlflow.source.git.commit": sha, **({DIRTY_TAG: "true"} if sha != commit else {})}


def create_run(store: Store, exp_id: str, name: str, tags: dict[str, str], *, parent: str | None = None,
               reuse: str | None = None, start_time: int | None = None, commit: str | None = None) -> str:
    """Reuse run ``reuse`` when it still exists, else a new run (nested under ``parent``; started at ``start_time``,
    ms since 1970, default now) with MLflow's default source and user tags and the :func:`commit_tags` of ``commit``
    (default: this checkout's; MLflow finds none when its entry point, e.g. .venv/bin/knnmix, is git-ignored)."""
    from mlflow.tracking.context.registry import resolve_tags

    client = store.client()
    if reuse:
        with suppress(Exception):  # MlflowException for an unknown id
            if client.get_run(reuse).info.lifecycle_stage == "active":
                client.update_run(reuse, status="RUNNING")
                return reuse
    extra = {PARENT_TAG: parent} if parent else {}
    known = commit_tags(git_commit() if commit is None else commit)
    all_tags = resolve_tags({**known, **tags, **extra})
    if not known:  # not MLflow's own guess: the repository of whatever script runs this (a user's, not knnmix's)
        all_tags = {k: v for k, v in all_tags.items() if not k.startswith("mlflow.source.git.")}
    return client.create_run(exp_id, run_name=name, tags=all_tags, start_time=start_time).info.run_id


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Log params, skipping ones already logged (params cannot change); ``log_batch`` splits them into batches.
    Returns those logged before with another value: ``{key: (logged value, value now)}``."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    text = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000] for k, v in params.items()}
    client.log_batch(run_id, params=[Param(k, v) for k, v in text.items() if k not in have])
    return {k: (have[k], v) for k, v in text.items() if have.get(k, v) != v}


def log_files(client: Any, run_id: str, folder: Path, names: Iterable[str], artifact_path: str | None = None) -> None:
    for name in names:
        if (folder / name).exists():
            client.log_artifact(run_id, str(folder / name), artifact_path)


def log_epochs(client: Any, run_id: str, records: Iterable[dict[str, Any]], ended: dict[int, int] | None = None
               ) -> list[int]:
    """Log the numbers of metrics.jsonl records with ``step = epoch`` and the time each epoch ``ended`` (ms since
    1970; default now); returns the epochs logged. A run's totals are one record of epoch 0 (one value per metric).
    ``None``, non-finite and non-numeric values are not logged."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics, epochs = [], []
    for r in records:
        epochs.append(int(r["epoch"]))
        at = (ended or {}).get(epochs[-1], now)
        metrics.extend(Metric(k, float(v), at, epochs[-1]) for k, v in r.items() if k != "epoch"
                       and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    client.log_batch(run_id, metrics=metrics)
    return epochs


def log_totals(client: Any, run_id: str, totals: dict[str, Any]) -> None:
    """A run's totals as metrics of step 0, each value once: a value the run has already is not logged again (a
    resumed run, a failed trial run again)."""
    have = client.get_run(run_id).data.metrics
    log_epochs(client, run_id, [{"epoch": 0, **{k: v for k, v in totals.items() if have.get(k) != v}}])


def log_run_folder(client: Any, run_id: str, folder: Path) -> dict[str, tuple[str, str]]:
    """A run folder's config as params, and the training data as the run's dataset input: the data set with its
    noisy labels (digest of the labels the run trained on), so the runs table's Dataset column names what each run
    saw. Returns the config values logged before that differ now (a resume that trains further: :func:`log_params`)."""
    import mlflow.data
    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    if not (folder / CONFIG).exists():
        return {}
    cfg = C.load(folder / CONFIG)
    changed = log_params(client, run_id, C.flatten(cfg))
    client.log_artifact(run_id, str(folder / CONFIG))
    if not (folder / NOISY_LABELS).exists():
        return changed
    with np.load(folder / NOISY_LABELS) as z:
        labels = z["noisy_labels"][z["train_rows"]]
    source = CodeDatasetSource({"knnmix.dataset": cfg.data.name, "knnmix.noise": cfg.noise.spec,
                                "data.root": str(cfg.data.root or "default")})
    ds = mlflow.data.from_numpy(labels, source=source, name=f"{cfg.data.name} [{cfg.noise.spec}]")
    context = InputTag("mlflow.data.context", "train")
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), [context])])
    return changed


# ----------------------------------------------------------------------------------------------------------------
# Models and single runs


def log_model(store: Store, run_id: str, weights: Path, *, register: str | None = None) -> str:
    """Log a weights file's network under run ``run_id`` with ``mlflow.pytorch``; returns the model URI.

    The logged module takes ``float32`` images ``(N, C, H, W)`` with pixels in [0, 1] at the training size and
    returns logits: it normalises them as training did (:func:`~knnmix.engine.checkpoint.load_predictor`). Its
    metadata holds the class names, the normalisation and the constructor arguments; MLflow infers the signature from
    an example.
    """
    import mlflow.pytorch
    import torch

    payload = safe_load(weights)
    args, serving, model = payload["model_args"], payload.get("serving", {}), predictor(payload, weights)
    example = torch.rand(2, *model.input_shape).numpy()
    with fluent(store), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", input_example=example, serialization_format="pickle",
            code_paths=[str(package_dir())], registered_model_name=register,
            pip_requirements=[f"{pkg}=={version(pkg).split('+')[0]}" for pkg in ("torch", "torchvision", "numpy")],
            metadata={"model_args": args, "weights": str(weights.absolute()), **serving,
                      "input": "float32 (N, C, H, W), pixels in [0, 1], H = W = image_size"},
        )
    return str(info.model_uri)


def register_once(store: Store, model_uri: str, run_id: str, name: str) -> None:
    """Register a logged model under ``name`` unless a version of ``name`` from run ``run_id`` exists."""
    import mlflow

    if not run_versions(store, name, run_id):
        with fluent(store):
            mlflow.register_model(model_uri, name)


def run_versions(store: Store, name: str, run_id: str) -> list[Any]:
    """The versions of registered model ``name`` logged from run ``run_id`` (found by run id and compared by name:
    MLflow's filter cannot quote a name with a ' in it)."""
    return [v for v in store.client().search_model_versions(f"run_id = '{run_id}'") if v.name == name]


def registered_version(store: Store, name: str, run_id: str, tags: dict[str, str]) -> str | None:
    """``models:/<name>/<version>`` of the newest version of registered model ``name`` logged from run ``run_id``
    (None if there is none), tagged with ``tags`` (e.g. its noise setting: the registry lists versions, not runs)."""
    versions = run_versions(store, name, run_id)
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    for key, value in tags.items():
        store.client().set_model_version_tag(name, newest.version, key, value)
    return f"models:/{name}/{newest.version}"


@contextmanager
def fluent(store: Store) -> Iterator[None]:
    """MLflow's fluent API on ``store``, quietly: its logging below ERROR and what it prints to stderr ("Successfully
    registered model ...", "Created version ...") are dropped unless an error follows. The fluent API needs the
    global URI; setting it also exports MLFLOW_TRACKING_URI to this process, which knnmix reads as the user's choice,
    so both are put back afterwards (a later run must not log into this store)."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store.uri)
    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with redirect_stderr(printed):
            yield
    except BaseException:
        sys.stderr.write(printed.getvalue())
        raise
    finally:
        quiet.setLevel(level)
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets it


def epoch_ends(info: dict[str, Any], records: list[dict[str, Any]]) -> dict[int, int]:
    """When a run started (key 0) and each epoch of it ended, in ms since 1970, as far as its ``run.json``
    (``info``: when it started and each resume) and ``metrics.jsonl`` records (training and evaluation times) tell;
    data loading and checkpoints are not counted, so an epoch is placed a little early."""
    def seconds(text: Any) -> float | None:  # (not recorded, or not as knnmix.provenance.now writes it: unknown)
        with suppress(TypeError, ValueError):
            return datetime.strptime(text, TIME_FORMAT).timestamp()
        return None

    starts = {0: seconds(info.get("started"))}
    for r in info.get("resumed", []):  # in order; a restart that went back (a redo) replaces the later starts
        if isinstance(after := r.get("after_epoch"), int):
            starts = {**{k: v for k, v in starts.items() if k < after}, after: seconds(r.get("at"))}
    if starts[0] is None:
        return {}  # (each epoch logged at the time it is logged)
    ends, t = {0: int(1000 * starts[0])}, starts[0]
    for r in sorted(records, key=lambda r: int(r["epoch"])):
        t = starts.get(int(r["epoch"]) - 1) or t
        t += float(r.get("train_time_s") or 0) + float(r.get("eval_time_s") or 0)
        ends[int(r["epoch"])] = int(1000 * t)
    return ends


def log_training_run(store: Store, folder: Path, summary: dict[str, Any], *, experiment: str = TRAIN_EXPERIMENT,
                     register: str | None = None) -> str:
    """Log a finished run folder (``knnmix train --tracking-uri``): config, per-epoch metrics, dataset, summary,
    label audit and the validation-selected model. Returns the run id.

    A resumed run folder continues the MLflow run it logged before (found by the id in its ``run.json`` and the
    folder's path, or its host and inode: also after a move within its file system, when tag ``knnmix.run_folder``
    says where it is now; a copy of the folder at another path gets a run of its own):
    only the new epochs are added, the config values it changed (``epochs``; MLflow's params cannot change) are named
    in tag ``knnmix.changed_on_resume``, and the model is logged again only when the selected epoch changed or
    ``register`` asks. The run starts when the run folder started, each epoch is logged at the time it ended
    (:func:`epoch_ends`), and the run's totals are metrics of step 0, as a sweep trial's: ``best_val_acc``,
    ``test_acc_at_best_val``."""
    client = store.client()
    cfg = C.load(folder / CONFIG)
    exp_id = experiment_id(store, experiment)
    info = json.loads((folder / RUN_INFO).read_text()) if (folder / RUN_INFO).exists() else {}
    started, own_id, here = info.get("started", ""), info.get("id", ""), str(folder.absolute())
    # the folder itself, wherever it is moved on its file system (a copy at another path is another folder)
    where = folder.stat()
    place = f"{socket.gethostname()}:{where.st_dev}:{where.st_ino}"
    tags = {KIND_TAG: "train", "knnmix.run_folder": here, "knnmix.run_started": started,
            "knnmix.run_folder_id": own_id, "knnmix.run_folder_place": place}
    if own_id:  # the run this folder logged before: its id, at the same path (a RayJob's next head node, a shared
        # volume) or in the same folder moved on this host's file system
        runs = client.search_runs([exp_id], f"tags.`knnmix.run_folder_id` = '{own_id}'")
        earlier = [r for r in runs if place == r.data.tags.get("knnmix.run_folder_place")
                   or here == r.data.tags.get("knnmix.run_folder")][:1]
    else:  # a run folder from before run.json had an id: the same start time in the same folder
        earlier = [r for r in client.search_runs([exp_id], f"tags.`knnmix.run_started` = '{started}'")
                   if r.data.tags.get("knnmix.run_folder") == here][:1] if started else []
    records = read_metrics(folder / METRICS)
    ended = epoch_ends(info, records)
    rid = create_run(store, exp_id, f"{cfg.method.name} {cfg.data.name} {cfg.noise.spec} seed {cfg.seed}", tags,
                     reuse=earlier[0].info.run_id if earlier else None, start_time=ended.get(0),
                     commit=str(summary.get("commit", "")))
    if earlier:  # where it is now (a new run has them already)
        for key in ("knnmix.run_folder", "knnmix.run_folder_place"):
            client.set_tag(rid, key, tags[key])
    if changed := log_run_folder(client, rid, folder):
        client.set_tag(rid, "knnmix.changed_on_resume", "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
    logged = {int(m.step) for m in client.get_metric_history(rid, "train_loss")}  # logged every epoch
    log_epochs(client, rid, [r for r in records if int(r["epoch"]) not in logged], ended)
    log_totals(client, rid, {"best_val_acc": summary["best_val"]["val_acc"],
                             "test_acc_at_best_val": summary["best_val"]["test_acc"]})
    log_files(client, rid, folder, (SUMMARY, LABEL_ISSUES, LABEL_ISSUES_PLOT, RUN_INFO))
    selected = str(summary["best_val"]["epoch"] or summary["epochs"])  # no validation split: the last epoch
    if (folder / BEST_MODEL).exists() and (register or client.get_run(rid).data.tags.get(MODEL_EPOCH_TAG) != selected):
        log_model(store, rid, folder / BEST_MODEL, register=register)
        client.set_tag(rid, MODEL_EPOCH_TAG, selected)
    client.set_terminated(rid, status="FINISHED")
    return rid
