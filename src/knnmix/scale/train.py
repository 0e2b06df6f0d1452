"""Data-parallel training on Ray Train (V2): the plain :class:`~knnmix.engine.loop.Engine` on every worker.

:func:`train_distributed` is what ``knnmix train --workers N`` runs. The driver checks the run folder and the Ray
Train storage, starts or joins Ray and runs a ``TorchTrainer`` whose workers each build the same Engine (the process
group makes it DDP, rank 0 writes the run folder) and add one callback that reports every epoch to Ray Train.

Checkpoints (every ``checkpoint_every`` epochs and at the end) are one directory per report under
``<storage_path>/<name>/``: rank 0 writes :data:`ENGINE_FILE` (the engine checkpoint without the per-sample state)
and every rank writes its strided share of the per-sample state as ``state-rank<r>-of-<w>.pt``; Ray Train merges the
workers' files into one directory. On (re)start every worker loads :data:`ENGINE_FILE` and all shares and calls
``engine.restore(ckpt, state_shares=shares)``, which checks that the shares cover every sample exactly once.

The pure function :func:`ray_configs` maps the ``distributed`` config section onto Ray's config objects.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knnmix import config as C
from knnmix.engine import dist as D
from knnmix.engine.loop import Engine
from knnmix.engine.outputs import SUMMARY, RunFolder
from knnmix.errors import KnnmixError
from knnmix.scale import ray_env

ENGINE_FILE = "engine.pt"
SHARE_PATTERN = re.compile(r"^state-rank(\d+)-of-(\d+)\.pt$")
CHECKPOINT_SCORE = "val_acc"
#: Ray Train's record of a run's reported checkpoints, inside ``<storage_path>/<name>/``.
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"

# Test hooks, read on the workers (the driver forwards KNNMIX_* variables to them).
FAIL_AT_ENV = "KNNMIX_TEST_FAIL_AT"  # "EPOCH:RANK:MARKER": that rank raises once after EPOCH, unless MARKER exists
DUMP_DIR_ENV = "KNNMIX_TEST_DUMP_DIR"  # folder: every rank dumps its full per-sample state at checkpoints / restores


def share_file(rank: int, world_size: int) -> str:
    return f"state-rank{rank:05d}-of-{world_size:05d}.pt"


def checkpoint_dir_name(epoch: int) -> str:
    return f"checkpoint_epoch{epoch:05d}"


# ----------------------------------------------------------------------------------------------------------------
# The Ray configs (pure)


@dataclass
class RayConfigs:
    """Everything the ``TorchTrainer`` is built from, derived from a knnmix config only."""

    scaling: Any  # ray.train.ScalingConfig
    torch_config: Any  # ray.train.torch.TorchConfig
    run: Any  # ray.train.RunConfig

    @property
    def storage_path(self) -> str:
        return self.run.storage_path

    @property
    def name(self) -> str:
        return self.run.name


def storage_of(cfg: C.Config) -> tuple[str, str]:
    """``(storage_path, name)``: ``distributed.storage_path`` or ``<abs out>/ray``; ``distributed.name`` or the name
    of the out folder."""
    out = Path(cfg.out).expanduser().absolute()
    x = cfg.distributed
    storage = x.storage_path if x.storage_path is not None else str(out / "ray")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().absolute())
    return storage, x.name or out.name


def ray_configs(cfg: C.Config, *, num_workers: int | None = None) -> RayConfigs:
    """The Ray Train configs for ``cfg`` (``num_workers`` overrides ``distributed.workers``, e.g. 0 = in-process)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    x = cfg.distributed
    storage, name = storage_of(cfg)
    scaling = ScalingConfig(
        num_workers=x.workers if num_workers is None else num_workers,
        use_gpu=x.use_gpu,
        resources_per_worker={"CPU": x.cpus_per_worker},  # with use_gpu Ray adds one GPU per worker
    )
    # Without a validation split there is no val_acc to rank by: keep the most recent checkpoints instead.
    score = CHECKPOINT_SCORE if cfg.data.val_fraction > 0 else None
    run = RunConfig(
        name=name,
        storage_path=storage,
        failure_config=FailureConfig(max_failures=x.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=x.num_to_keep, checkpoint_score_attribute=score, checkpoint_score_order="max"
        ),
        # The knnmix package itself travels in the job's runtime env (ray_env.ensure_ray): Ray uploads local
        # folders only at the job level.
        worker_runtime_env={"env_vars": {**ray_env.DRIVER_ENV, **ray_env.forwarded_env()}},
    )
    return RayConfigs(scaling=scaling, torch_config=TorchConfig(backend="nccl" if x.use_gpu else "gloo"), run=run)


def worker_config(cfg: C.Config) -> C.Config:
    """The config the workers run: local paths made absolute (Ray Train moves workers into their own working
    directory) and ``threads`` = ``distributed.cpus_per_worker`` (torch and faiss threads per worker)."""
    changes: dict[str, Any] = {"threads": cfg.distributed.cpus_per_worker}
    for key, value in (
        ("out", cfg.out),
        ("data.root", cfg.data.root),
        ("noise.cifar_n_dir", cfg.noise.cifar_n_dir),
        ("model.pretrained", cfg.model.pretrained),
    ):
        if value is not None and "://" not in value and not Path(value).expanduser().is_absolute():
            changes[key] = str(Path(value).expanduser().absolute())
    storage, name = storage_of(cfg)
    changes["distributed.storage_path"] = storage
    changes["distributed.name"] = name
    return C.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------------------------------
# The driver


@dataclass
class DistributedRun:
    summary: dict[str, Any]
    result: Any  # ray.train.Result
    configs: RayConfigs


def train_distributed(cfg: C.Config, *, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train ``cfg`` on ``distributed.workers`` Ray Train workers; return the run's summary (as :func:`train`).

    An existing run (in ``out`` or in Ray Train's storage) is continued with ``resume``, replaced with
    ``overwrite``, else an error.
    """
    return fit(cfg, resume=resume, overwrite=overwrite).summary


def fit(
    cfg: C.Config, *, resume: bool = False, overwrite: bool = False, num_workers: int | None = None,
    callbacks: list[Any] | None = None,
) -> DistributedRun:
    """:func:`train_distributed` with the Ray ``Result`` too; ``num_workers=0`` runs the worker function in-process.

    ``callbacks``: extra Ray Train callbacks for the run (a sweep trial passes Ray Tune's ``TuneReportCallback``).
    """
    from ray.train import TrainingFailedError
    from ray.train.torch import TorchTrainer

    cfg = worker_config(cfg)
    configs = ray_configs(cfg, num_workers=num_workers)
    if callbacks:
        configs.run.callbacks = [*(configs.run.callbacks or []), *callbacks]
    local = configs.scaling.num_workers == 0
    if local and "://" in configs.storage_path:
        raise KnnmixError("in-process Ray Train (num_workers=0) needs a local distributed.storage_path")
    check_run_state(cfg, resume=resume, overwrite=overwrite)
    loop_config = {
        "config": C.to_dict(cfg),
        "resume": resume,
        # In-process mode has no checkpoint upload: the worker writes its checkpoints straight into the storage.
        "local_dir": str(Path(configs.storage_path) / configs.name) if local else None,
    }
    if not local:
        ray_env.ensure_ray()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        scaling_config=configs.scaling,
        torch_config=configs.torch_config,
        run_config=configs.run,
    )
    try:
        with ray_env.driver_env():
            result = trainer.fit()
    except TrainingFailedError as exc:
        user = user_error(exc)
        if user is not None:
            raise user.with_traceback(None) from None
        raise
    summary = result.return_value if isinstance(result.return_value, dict) else None
    if summary is None:
        path = RunFolder(cfg.out).file(SUMMARY)
        if not path.exists():
            raise KnnmixError(f"the run finished but {str(path)!r} is missing (is 'out' on storage every node sees?)")
        summary = json.loads(path.read_text())
    return DistributedRun(summary=summary, result=result, configs=configs)


def user_error(exc: BaseException) -> KnnmixError | None:
    """The first (lowest-rank) :class:`KnnmixError` a worker raised, out of Ray Train's wrapper exception."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict):
        for rank in sorted(failures):
            if isinstance(failures[rank], KnnmixError):
                return failures[rank]
    inner = getattr(exc, "controller_failure", None)
    return inner if isinstance(inner, KnnmixError) else None


def latest_ray_checkpoint(storage_path: str, name: str) -> str | None:
    """The latest checkpoint Ray Train recorded for run ``name`` in ``storage_path`` (its path), or ``None``."""
    import pyarrow
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
        snapshot = f"{root.rstrip('/')}/{name}/{SNAPSHOT_FILE}"
        if fs.get_file_info(snapshot).type == pyarrow.fs.FileType.NotFound:
            return None
        with fs.open_input_stream(snapshot) as fh:
            state = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        text = " ".join(str(exc).split())[:300]
        raise KnnmixError(f"distributed.storage_path {storage_path!r} cannot be read: {text}") from None
    latest = state.get("latest_checkpoint_result") or {}
    return (latest.get("checkpoint_dir_name") or latest.get("checkpoint") or "<recorded>") if latest else None


def run_exists(cfg: C.Config) -> bool:
    """Whether ``cfg``'s run folder holds ``checkpoint.pt`` or Ray Train's storage holds checkpoints of its run name."""
    storage, name = storage_of(cfg)
    return RunFolder(cfg.out).has_run() or latest_ray_checkpoint(storage, name) is not None


def check_run_state(cfg: C.Config, *, resume: bool, overwrite: bool = False) -> None:
    """Continue a run (``resume``), replace it (``overwrite``) or refuse to mix two, as the single-process ``train``.

    A run exists when the run folder holds ``checkpoint.pt`` or Ray Train's storage holds checkpoints for this run
    name (Ray Train would silently continue from them). ``overwrite`` deletes both: the run folder's run files and
    ``<storage_path>/<name>``.
    """
    if resume and overwrite:
        raise KnnmixError("--resume and --overwrite exclude each other")
    folder = RunFolder(cfg.out)
    storage, name = storage_of(cfg)
    ray_ckpt = latest_ray_checkpoint(storage, name)
    if not resume and (folder.has_run() or ray_ckpt is not None):
        if not overwrite:
            where = (
                f"run folder {str(folder.path)!r}" if folder.has_run()
                else f"Ray Train storage {storage!r} (run name {name!r})"
            )
            raise KnnmixError(
                f"{where} already holds a run; pass --resume to continue it, --overwrite to replace it, or choose "
                "another --out (or distributed.name)"
            )
        folder.clear()
        delete_ray_run(storage, name)
    if resume and ray_ckpt is None and not folder.has_run():
        raise KnnmixError(
            f"nothing to resume: no Ray Train checkpoint of run {name!r} in {storage!r} and no "
            f"{str(folder.file('checkpoint.pt'))!r}"
        )


def delete_ray_run(storage_path: str, name: str) -> None:
    """Delete Ray Train's folder of run ``name`` (its checkpoints and snapshot) from the storage."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    path = f"{root.rstrip('/')}/{name}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(path)


# ----------------------------------------------------------------------------------------------------------------
# The workers


def write_checkpoint(engine: Engine, directory: str | Path) -> None:
    """This worker's files of one checkpoint: rank 0 the engine (without the per-sample state), every rank its share."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    dist = engine.dist
    if dist.is_main:
        payload = engine.checkpoint()
        payload.pop("state")
        payload["world_size"] = dist.world_size
        torch.save(payload, d / ENGINE_FILE)
    index = D.shard(torch.arange(engine.state.num_samples), dist)
    torch.save(engine.state.rows(index), d / share_file(dist.rank, dist.world_size))


def read_checkpoint(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """``(engine checkpoint, [every worker's state share])`` from a merged checkpoint directory."""
    d = Path(directory)
    if not (d / ENGINE_FILE).exists():
        raise KnnmixError(f"checkpoint {str(d)!r} has no {ENGINE_FILE}")
    payload = torch.load(d / ENGINE_FILE, map_location="cpu", weights_only=False)
    found = sorted((int(m[1]), int(m[2]), p) for p in d.iterdir() if (m := SHARE_PATTERN.match(p.name)))
    world = int(payload.get("world_size", 0))
    if [r for r, w, _ in found if w == world] != list(range(world)) or any(w != world for _, w, _ in found):
        names = ", ".join(p.name for _, _, p in found) or "none"
        raise KnnmixError(f"checkpoint {str(d)!r} should hold the state shares of {world} workers; found {names}")
    shares = [torch.load(p, map_location="cpu", weights_only=True) for _, _, p in found]
    return payload, shares


class Reporter:
    """The engine callback that reports each epoch to Ray Train, with a checkpoint every ``checkpoint_every``."""

    def __init__(self, cfg: C.Config, local_dir: str | None) -> None:
        self.cfg = cfg
        self.local_dir = local_dir

    def __call__(self, engine: Engine, record: dict[str, Any]) -> None:
        import ray.train

        metrics = numeric_metrics(record)
        epoch = int(record["epoch"])
        if not (epoch % self.cfg.checkpoint_every == 0 or epoch == self.cfg.epochs):
            ray.train.report(metrics)
            return
        name = checkpoint_dir_name(epoch)
        dump_state(engine, f"saved-epoch{epoch}")
        if self.local_dir is not None:  # in-process: nothing uploads, so write where the checkpoint is kept
            target = Path(self.local_dir) / name
            write_checkpoint(engine, target)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(target)))
            return
        with tempfile.TemporaryDirectory(prefix="knnmix-ckpt-") as tmp:
            write_checkpoint(engine, tmp)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)


def numeric_metrics(record: dict[str, Any]) -> dict[str, float | int]:
    """The epoch record's numbers (``None`` and text dropped)."""
    return {
        k: v for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def fail_once_hook() -> Callable[[Engine, dict[str, Any]], None] | None:
    """Test hook: with ``KNNMIX_TEST_FAIL_AT=EPOCH:RANK:MARKER``, that rank raises once at the end of EPOCH."""
    spec = os.environ.get(FAIL_AT_ENV)
    if not spec:
        return None
    epoch_s, rank_s, marker = spec.split(":", 2)

    def hook(engine: Engine, record: dict[str, Any]) -> None:
        if record["epoch"] == int(epoch_s) and engine.dist.rank == int(rank_s) and not os.path.exists(marker):
            Path(marker).write_text(f"failed after epoch {record['epoch']} on rank {engine.dist.rank}\n")
            raise RuntimeError(f"{FAIL_AT_ENV}: injected failure after epoch {record['epoch']}")

    return hook


def dump_state(engine: Engine, tag: str) -> None:
    """Test hook: with ``KNNMIX_TEST_DUMP_DIR`` set, save this rank's full per-sample state as ``<tag>-rank<r>.pt``."""
    folder = os.environ.get(DUMP_DIR_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        payload = {"epoch": engine.epoch, "state": engine.state.state_dict()}
        torch.save(payload, Path(folder) / f"{tag}-rank{engine.dist.rank}.pt")


def say(text: str) -> None:
    """Print one progress line from a worker (Ray Train's patched ``print`` would also log it: it shows twice)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def train_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray Train worker: the Engine, restored from Ray Train's checkpoint if any, reporting every epoch.

    Rank 0 returns the run's summary (Ray Train hands it to the driver as ``Result.return_value``).
    """
    import ray.train
    import ray.train.torch

    cfg = C.from_dict(loop_config["config"])
    torch.set_num_threads(cfg.distributed.cpus_per_worker)
    dist = D.current()
    folder = RunFolder(cfg.out)
    engine = Engine(cfg, dist=dist, device=ray.train.torch.get_device(), folder=folder, echo=say)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            payload, shares = read_checkpoint(d)
        engine.restore(payload, state_shares=shares)
        dump_state(engine, f"restored-ray-epoch{engine.epoch}")
    elif loop_config["resume"] and folder.has_run():
        # No Ray Train checkpoint of this run name: continue from the run folder's full checkpoint
        # (e.g. a single-process run continued on workers).
        engine.restore(folder.load_checkpoint())
        dump_state(engine, f"restored-folder-epoch{engine.epoch}")
    else:
        engine.start_outputs()  # (a restart before the first checkpoint starts metrics.jsonl afresh)
    callbacks = [cb for cb in (fail_once_hook(),) if cb is not None]
    callbacks.append(Reporter(cfg, loop_config.get("local_dir")))
    summary = engine.fit(callbacks)
    return summary if dist.is_main else None
