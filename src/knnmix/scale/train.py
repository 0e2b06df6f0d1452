"""Data-parallel training on Ray Train (V2): the plain engine on every worker, plus a report per epoch.

:func:`train_distributed` is what ``knnmix train --workers N`` runs; :func:`train_worker` is each worker; the pure
function :func:`ray_configs` maps the ``distributed`` config section onto Ray's config objects. One checkpoint path:
rank 0's ``checkpoint.pt`` is what the run folder keeps and what Ray Train keeps. See docs/distributed.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import pyarrow.fs
import torch

from knnmix import config as C
from knnmix.methods import dist as D
from knnmix.engine import train as E
from knnmix.engine.checkpoint import CHECKPOINT, METRICS, RunFolder, folder_lock, load_checkpoint, read_metrics
from knnmix.engine.report import numeric
from knnmix.errors import CheckpointError, KnnmixError, KnnmixWarning, one_line, warning_line
from knnmix.scale import ray_env

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints
FAIL_AT_ENV = "KNNMIX_TEST_FAIL_AT"  # test hook "EPOCH:RANK:MARKER": that rank raises once after EPOCH
START_TRIES = 10  # Ray Train's worker start-ups (each RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) before giving up


def checkpoint_dir_name(epoch: int, redo: str = "") -> str:
    """Ray Train's folder of epoch ``epoch``'s checkpoint; ``redo`` marks epochs trained again after a restore that
    skipped a newer, unreadable checkpoint (two checkpoints in one folder: Ray's eviction of one broke the run)."""
    return f"checkpoint_epoch{epoch:05d}{redo}"


# ----------------------------------------------------------------------------------------------------------------
# The Ray configs (pure)


@dataclass
class RayConfigs:
    """Everything the ``TorchTrainer`` is built from, derived from a knnmix config only."""

    scaling: Any  # ray.train.ScalingConfig
    torch_config: Any  # ray.train.torch.TorchConfig
    run: Any  # ray.train.RunConfig


def storage_of(cfg: C.Config) -> tuple[str, str]:
    """``(storage_path, name)``: ``distributed.storage_path`` or ``<abs out>/ray``; ``distributed.name`` or out's."""
    out = Path(cfg.out).expanduser().absolute()
    x = cfg.distributed
    storage = x.storage_path if x.storage_path is not None else str(out / "ray")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().absolute())
    return storage, x.name or out.name


def ray_configs(cfg: C.Config, *, num_workers: int | None = None, callbacks: list[Any] | None = None,
                verbose: bool = False) -> RayConfigs:
    """The Ray Train configs for ``cfg`` (``num_workers`` overrides ``distributed.workers``, e.g. 0 = in-process;
    ``callbacks``: Ray Train callbacks; ``verbose``: Ray Train's INFO lines on the console, e.g. each worker's
    'Reporting training result ...' every epoch)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    x = cfg.distributed
    storage, name = storage_of(cfg)
    scaling = ScalingConfig(num_workers=x.workers if num_workers is None else num_workers, use_gpu=x.use_gpu,
                            resources_per_worker={"CPU": x.cpus_per_worker})  # use_gpu adds one GPU per worker
    # Without a validation split there is no val_acc to rank by: keep the most recent checkpoints instead.
    score = "val_acc" if cfg.data.val_fraction > 0 else None
    run = RunConfig(
        name=name, storage_path=storage,  # Ray retries a start-up that times out forever
        callbacks=[*(callbacks or []), *([] if verbose else [quiet_controller()])],
        failure_config=FailureConfig(max_failures=x.max_failures, controller_failure_limit=START_TRIES),
        checkpoint_config=CheckpointConfig(num_to_keep=x.num_to_keep, checkpoint_score_attribute=score,
                                           checkpoint_score_order="max"),
        # The knnmix package travels in the job's runtime env (ray_env.ensure_ray): Ray uploads folders per job only
        worker_runtime_env={"env_vars": ray_env.worker_env()},
        logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"))
    return RayConfigs(scaling=scaling, torch_config=TorchConfig(backend="nccl" if x.use_gpu else "gloo"), run=run)


def worker_config(cfg: C.Config) -> C.Config:
    """The config the workers run: local paths made absolute (Ray Train moves workers into their own working
    directory) and ``threads`` = ``distributed.cpus_per_worker``. The Ray Train storage and name stay as the user
    set them: the run folder's config.yaml is this config, and a copied or moved run folder resumed with its own
    ``--out`` must find its own storage, not keep writing into the original's."""
    return C.replace(cfg, threads=cfg.distributed.cpus_per_worker, **C.absolute_paths(cfg))


# ----------------------------------------------------------------------------------------------------------------
# The driver


@dataclass
class DistributedRun:
    summary: dict[str, Any]
    result: Any  # ray.train.Result


def train_distributed(cfg: C.Config, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg`` on ``distributed.workers`` Ray Train workers; return the run's summary (as ``train``)."""
    with folder_lock(Path(cfg.out).expanduser().absolute()), E.saying_how_to_start_afresh(resume):
        return fit(cfg, resume=resume, overwrite=overwrite).summary


def fit(cfg: C.Config, *, resume: bool = False, overwrite: bool = False, num_workers: int | None = None,
        callbacks: list[Any] | None = None, verbose: bool = False) -> DistributedRun:
    """Run ``cfg`` on Ray Train (``num_workers=0``: the worker function in-process, for tests); ``callbacks`` are
    extra Ray Train callbacks (a sweep trial passes Ray Tune's ``TuneReportCallback``)."""
    from ray.train import TrainingFailedError
    from ray.train.torch import TorchTrainer

    cfg = worker_config(cfg)
    configs = ray_configs(cfg, num_workers=num_workers, callbacks=callbacks, verbose=verbose)
    storage, name = configs.run.storage_path, configs.run.name
    replace = check_run_state(cfg, resume=resume, overwrite=overwrite)  # before Ray starts
    if replace or cfg.distributed.max_failures == -1:  # as without Ray, the run must build before the run it
        E.check_buildable(cfg)  # replaces goes; and a worker's user error (a typo in data.root) is retried forever
    local = configs.scaling.num_workers == 0
    if local and "://" in storage:
        raise KnnmixError("in-process Ray Train (num_workers=0) needs a local distributed.storage_path")
    if not local:
        ray_env.ensure_ray(verbose=verbose, log_to_driver=True)  # rank 0's lines reach the user
        fits_this_machine(cfg)
    if "://" not in storage:  # Ray Train's error for a folder it cannot make is a traceback of ~90 lines
        try:
            Path(storage).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KnnmixError(f"distributed.storage_path {storage!r} cannot be created: {one_line(exc)}") from None
    if replace:  # the run --overwrite replaces goes once the checks above passed
        clear_run(cfg)
    trainer = TorchTrainer(
        train_worker, train_loop_config={"config": C.to_dict(cfg), "resume": resume, "verbose": verbose,
                                         "keep_in": str(Path(storage) / name) if local else None},
        scaling_config=configs.scaling, torch_config=configs.torch_config, run_config=configs.run)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except SystemExit:  # Ray Train's Ctrl+C (and so SIGTERM) handler aborts the run, then exits 1 without a word
        raise KeyboardInterrupt from None  # 'knnmix: interrupted', status 130, as a run without Ray
    except TrainingFailedError as exc:
        if (user := user_error(exc)) is not None:
            raise user.with_traceback(None) from None
        if "WorkerGroupStartupTimeout" in type(getattr(exc, "controller_failure", None)).__name__:
            raise KnnmixError(f"Ray Train could not start distributed.workers={cfg.distributed.workers} in "
                              f"{START_TRIES} start-up tries: the cluster lacks the CPUs or GPUs (`ray status`)")
        raise
    finally:  # Ray Train's Ctrl+C handler outlives the run, where it ignores Ctrl+C (and SIGTERM): the caller's again
        if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:  # (None: not set from Python)
            signal.signal(signal.SIGINT, sigint)  # (Ray Train sets its handler in the main thread only)
    return DistributedRun(summary=result.return_value, result=result)  # rank 0's train_worker returns the summary


def fits_this_machine(cfg: C.Config) -> None:
    """Refuse workers that a Ray of this machine alone (its GCS on the loopback address: no other node can join,
    e.g. the private one :func:`~knnmix.scale.ray_env.ensure_ray` starts) can never place. On a cluster, which may
    autoscale, a shortfall now is a warning (Ray Train gives up after :data:`START_TRIES` start-up timeouts)."""
    import ray

    alone = ray.get_runtime_context().gcs_address.rpartition(":")[0] in ("127.0.0.1", "localhost")
    x, have = cfg.distributed, ray.cluster_resources()
    for what, each in (("CPU", x.cpus_per_worker), ("GPU", int(x.use_gpu))):
        if x.workers * each > have.get(what, 0):
            need = f"distributed.workers={x.workers} x {each} {what} each needs {x.workers * each} {what}s but"
            fewer = "distributed.cpus_per_worker" if what == "CPU" else "no GPU (distributed.use_gpu=false)"
            if alone:
                raise KnnmixError(f"{need} this machine has {have.get(what, 0):g}: use fewer workers or {fewer}, or "
                                  "join a cluster (RAY_ADDRESS)")
            warnings.warn(f"{need} the cluster has {have.get(what, 0):g} now: waiting for nodes to join (Ray Train "
                          f"gives up after {START_TRIES} start-up timeouts of RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, "
                          "60 s by default)", KnnmixWarning, 2)


def user_error(exc: BaseException) -> KnnmixError | None:
    """The first (lowest-rank) :class:`KnnmixError` a worker raised, out of Ray Train's wrapper exception."""
    failures = getattr(exc, "worker_failures", None) or {}  # a WorkerGroupError's, by rank; a ControllerError's
    raised = [failures[rank] for rank in sorted(failures)] + [getattr(exc, "controller_failure", None)]
    return next((e for e in raised if isinstance(e, KnnmixError)), None)


def _ray_run_dir(storage_path: str, name: str) -> tuple[Any, str]:
    """The filesystem of ``storage_path`` and Ray Train's folder of run ``name`` on it."""
    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    return fs, f"{root.rstrip('/')}/{name}"


def latest_ray_checkpoint(storage_path: str, name: str) -> dict[str, Any] | None:
    """Ray Train's record of run ``name``'s latest checkpoint (``checkpoint_dir_name``, the epoch's ``metrics``)."""
    try:
        fs, path = _ray_run_dir(storage_path, name)
        snapshot = f"{path}/{SNAPSHOT_FILE}"
        if fs.get_file_info(snapshot).type == pyarrow.fs.FileType.NotFound:
            return None
        with fs.open_input_stream(snapshot) as fh:
            return json.loads(fh.read()).get("latest_checkpoint_result") or None
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise KnnmixError(f"distributed.storage_path {storage_path!r} cannot be read: {one_line(exc)}") from None


def of_another_run(folder: RunFolder, latest: dict[str, Any]) -> bool:
    """Whether Ray Train's ``latest`` checkpoint is not one of the run in ``folder``: no epoch of its
    ``metrics.jsonl`` has the numbers Ray Train recorded (the run was replaced without Ray since, e.g. by a
    single-process ``--overwrite``, and Ray Train's checkpoints of the old one stayed)."""
    metrics = latest.get("metrics") or {}
    try:
        records = read_metrics(folder.file(METRICS))
    except (OSError, ValueError):
        return False  # nothing to tell by
    return "epoch" in metrics and not any(all(r.get(k) == v for k, v in metrics.items()) for r in records)


def run_exists(cfg: C.Config) -> bool:
    return RunFolder(cfg.out).has_run() or latest_ray_checkpoint(*storage_of(cfg)) is not None


def check_run_state(cfg: C.Config, *, resume: bool, overwrite: bool = False) -> bool:
    """Continue a run (``resume``), replace it (``overwrite``) or refuse to mix two, as the single-process ``train``.

    A run exists when the run folder holds ``checkpoint.pt`` or Ray Train's storage holds checkpoints for this run
    name (Ray Train would silently continue from them). Returns whether ``overwrite`` must replace one
    (:func:`clear_run`).
    """
    folder = RunFolder(cfg.out)
    storage, name = storage_of(cfg)
    latest = cache(partial(latest_ray_checkpoint, storage, name))  # read once, and only once the flags agree

    def held() -> str | None:
        return (f"run folder {str(folder.path)!r}" if folder.has_run()
                else f"Ray Train storage {storage!r} (run name {name!r})" if latest() is not None else None)

    missing = f"no Ray Train checkpoint of run {name!r} in {storage!r} and no {str(folder.file(CHECKPOINT))!r}"
    replace = E.resume_or_replace(held, resume=resume, overwrite=overwrite, missing=missing,
                                  another="--out (or distributed.name)")
    # Ray Train would restore another run's checkpoint: the old run, or a config error
    if resume and folder.has_run() and latest() and of_another_run(folder, latest()):
        raise KnnmixError(f"Ray Train storage {storage!r} (run name {name!r}) holds checkpoints of another run than "
                          f"run folder {str(folder.path)!r} (replaced without Ray?): delete {storage}/{name} or "
                          "pass --set distributed.name=NEW to resume the folder's checkpoint.pt")
    return replace


def clear_run(cfg: C.Config) -> None:
    """Delete the run in the run folder and Ray Train's folder of the run (its checkpoints and snapshot)."""
    RunFolder(cfg.out).clear()
    fs, path = _ray_run_dir(*storage_of(cfg))
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


# ----------------------------------------------------------------------------------------------------------------
# The workers (also used by in-process sweep trials, with Ray Tune's report in place of Ray Train's)


def restore_newest_readable(run: E.Run, checkpoint: Any, folder: RunFolder | None = None) -> bool:
    """Restore ``run`` from ``checkpoint`` or, when it does not read or fit, from the newest of its kept siblings
    (Ray Train's ``checkpoint_epoch*`` or Tune's ``checkpoint_0*`` beside it) that does, else from the run
    ``folder``'s own ``checkpoint.pt``. Returns whether it skipped ``checkpoint``."""
    from ray.train import Checkpoint

    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path.rsplit("/", 1)[0]))
    except OSError:
        infos = []
    kept = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                   and i.base_name.startswith("checkpoint_")), reverse=True)
    errors: list[str] = []
    for name in kept[kept.index(path):] if path in kept else [path, *kept]:
        with (checkpoint if name == path else Checkpoint(name, filesystem=fs)).as_directory() as d:
            if restored(run, Path(d) / CHECKPOINT, errors):
                return name != path
    if folder is not None and folder.has_run() and restored(run, folder.file(CHECKPOINT), errors):
        return True
    raise CheckpointError(f"no kept checkpoint of this run reads: {errors[0]}")


def restored(run: E.Run, file: Path, errors: list[str]) -> bool:
    """Whether ``run`` restored from checkpoint ``file``; if not, why is added to ``errors`` (and warned on rank 0)."""
    try:
        E.restore(run, load_checkpoint(file), str(file))
        return True
    except CheckpointError as exc:
        errors.append(str(exc))
        if run.dist.is_main:
            warnings.warn(f"skipping an unreadable checkpoint: {exc}", KnnmixWarning, stacklevel=2)
        return False


def report_epoch(report: Callable[..., None], checkpoint_cls: Any, *, named: bool = True,
                 keep_in: str | None = None, redo: str = "") -> E.OnEpoch:
    """The ``on_epoch`` hook that reports each epoch's numbers to Ray (``ray.train.report`` or ``ray.tune.report``),
    with rank 0's ``checkpoint.pt`` on checkpoint epochs (after :func:`~knnmix.engine.train.finish` at the last).
    ``keep_in``: Ray Train's local mode uploads nothing, so its checkpoints are written where they are kept."""

    def on_epoch(run: E.Run, record: dict[str, Any], summary: dict[str, Any] | None) -> None:
        metrics = numeric(record)
        epoch = int(record["epoch"])
        fail_once(run, epoch)
        if not E.is_checkpoint_epoch(run.cfg, epoch) or not run.dist.is_main:
            report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="knnmix-ckpt-") as tmp:
            folder = Path(keep_in) / checkpoint_dir_name(epoch, redo) if keep_in else Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            source, target = RunFolder(run.cfg.out).file(CHECKPOINT), folder / CHECKPOINT
            try:
                os.link(source, target)  # the run folder's file, not a second copy
            except OSError:
                torch.save(E.checkpoint(run), target)
            name = {"checkpoint_dir_name": checkpoint_dir_name(epoch, redo)} if named else {}  # Tune names its own
            report(metrics, checkpoint=checkpoint_cls.from_directory(str(folder)), **name)

    return on_epoch


def fail_once(run: E.Run, epoch: int) -> None:
    """Test hook: with ``KNNMIX_TEST_FAIL_AT=EPOCH:RANK:MARKER``, that rank raises once at the end of EPOCH."""
    if spec := os.environ.get(FAIL_AT_ENV):
        epoch_s, rank_s, marker = spec.split(":", 2)
        if epoch == int(epoch_s) and run.dist.rank == int(rank_s) and not os.path.exists(marker):
            Path(marker).write_text(f"failed after epoch {epoch} on rank {run.dist.rank}\n")
            raise RuntimeError(f"{FAIL_AT_ENV}: injected failure after epoch {epoch}")


def not_a_user_error(record: logging.LogRecord) -> bool:  # False for Ray Train's log of a knnmix error
    return "\nknnmix.errors." not in record.getMessage()


def quiet_controller() -> Any:
    """A Ray Train callback that keeps the controller's traceback of each worker start-up that timed out (a cluster
    short of CPUs: one a minute) off the console; knnmix says it in one line after :data:`START_TRIES` of them."""
    from ray.train.v2._internal.execution.callback import ControllerCallback  # (run in the controller's process)

    class Quiet(ControllerCallback):
        def after_controller_start(self, train_run_context: Any) -> None:
            logging.getLogger("ray.train.v2._internal.execution.controller.controller").addFilter(
                lambda r: not r.exc_info or type(r.exc_info[1]).__name__ != "WorkerGroupStartupTimeoutError")
    return Quiet()


def say(text: str) -> None:
    """Print one progress line from a worker (Ray Train's patched ``print`` would also log it: it shows twice)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def start_or_restore(run: E.Run, folder: RunFolder, checkpoint: Any, resume: bool) -> str:
    """Restore from Ray's checkpoint (``resume``: the run folder's when newer), else (``resume``) from the run
    folder's, else start the run folder (rank 0). Returns the ``redo`` mark of :func:`checkpoint_dir_name` for the
    epochs to come (``""`` unless it skipped Ray's newest checkpoint)."""
    redo = ""
    newer = newer_in_folder(folder, checkpoint) if checkpoint is not None and resume else None
    if checkpoint is not None and newer is None:
        if restore_newest_readable(run, checkpoint, folder):
            redo = f"-redo{time.strftime('%Y%m%d%H%M%S')}"  # (rank 0's is the one that names checkpoints)
    elif resume and folder.has_run():  # Ray's is older, or none (e.g. a single-process run continued on workers)
        E.restore(run, newer or folder.load_checkpoint(), str(folder.file(CHECKPOINT)))
    else:
        if run.dist.is_main:  # (a restart before any checkpoint starts afresh)
            folder.start(run.cfg, run.splits.noisy_labels_record(), run.warnings)
        return redo
    if run.dist.is_main:
        folder.resumed(run.cfg, run.epoch, run.history, run.warnings)
    return redo


def newer_in_folder(folder: RunFolder, checkpoint: Any) -> dict[str, Any] | None:
    """The run folder's checkpoint when it is of a later epoch than Ray Train's ``checkpoint`` (the run was continued
    without Ray since, ``knnmix train --resume`` in one process: restoring Ray's would drop those epochs unsaid)."""
    epoch = re.fullmatch(r"checkpoint_epoch(\d+)(-redo\d+)?", checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    if epoch is None or not folder.has_run():  # (Tune's checkpoint_0000NN: a sweep trial, continued only by Tune)
        return None
    try:
        mine = folder.load_checkpoint()
    except CheckpointError:
        return None
    return mine if int(mine["epoch"]) > int(epoch.group(1)) else None


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray Train worker: the run, restored if Ray Train kept a checkpoint, reporting every epoch.

    Rank 0 returns the run's summary (Ray Train hands it to the driver as ``Result.return_value``).
    """
    import ray.train.torch

    verbose = bool(loop_config.get("verbose"))
    ray_env.quiet(verbose)
    warnings.formatwarning = warning_line  # type: ignore[assignment]  # one line, as on the driver
    # Ray Train logs each worker's report at INFO under a logger named by its file's path, outside "ray.train", so
    # RunConfig's LoggingConfig misses it: one 'Reporting training result ...' line per worker and epoch
    if (context := sys.modules.get("ray.train.v2._internal.execution.context")) is not None:
        logging.getLogger(context.__file__).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:  # a user error (a typo in data.root) is the driver's one line: not each worker's traceback too
        logging.getLogger("ray.train.v2._internal.util").addFilter(not_a_user_error)  # (added once per process)
    cfg = C.from_dict(loop_config["config"])  # worker_config's: threads = distributed.cpus_per_worker, set by build_run
    run = E.build_run(cfg, dist=D.current(), device=ray.train.torch.get_device())
    folder = RunFolder(cfg.out)
    redo = start_or_restore(run, folder, ray.train.get_checkpoint(), loop_config["resume"])
    if run.dist.is_main and run.epoch:  # restored (a resume, or a restart after a worker failure): as in one process
        say(run.resumed_line())
    summary = E.fit(run, folder if run.dist.is_main else None, echo=say,
                    on_epoch=report_epoch(ray.train.report, ray.train.Checkpoint, keep_in=loop_config.get("keep_in"),
                                          redo=redo))
    return summary if run.dist.is_main else None
