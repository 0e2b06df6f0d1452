"""The training engine as free functions: one engine for every method, in one process or as one rank of a group.

:func:`train` reads top to bottom: lock the run folder, build the run, start or resume it, :func:`fit` the remaining
epochs, :func:`finish`. One epoch (:func:`run_epoch`) is the method's preparation phases (embedding, correction,
mixture fit, neighbour search), :func:`train_one_epoch`, and :func:`evaluate` on the noisy validation split (the
only thing selected on) and the test split (reported only). :func:`infer` is the one inference loop, used for
evaluation, embedding the training set and predicting. Under ``torch.distributed`` every rank runs the same code on
its own shard; with no process group it is a plain loop.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from knnmix import config as C
from knnmix.data import LabelledDataset, collate_batch, dataset_options
from knnmix.engine import report
from knnmix.engine.checkpoint import (BEST_MODEL, CHECKPOINT, FORMAT, RunFolder, folder_lock, rng_state, safe_load,
                                     set_rng_state)
from knnmix.engine.splits import Splits, build_splits
from knnmix.errors import (CheckpointError, ConfigError, DivergedError, KnnmixError, KnnmixWarning, one_line,
                           recording_warnings)
from knnmix.math import FaissSearch, NeighbourSearch, TorchSearch, l2_normalise
from knnmix.methods import METHODS, Method
from knnmix.methods import dist as D
from knnmix.methods.phases import Bank, gather_bank
from knnmix.methods.state import SampleState
from knnmix.models import build_model
from knnmix.noise import parse_noise_spec
from knnmix.provenance import git_commit

#: ``on_epoch(run, record, summary)``: called after every epoch (after :func:`finish` at the last one, with its summary).
OnEpoch = Callable[["Run", dict[str, Any], "dict[str, Any] | None"], None]
Echo = Callable[[str], None] | None

# Config keys that may differ between a checkpoint and the run that resumes it (paths, resources, length).
RESUMABLE_CHANGES = ("epochs", "out", "log_every", "checkpoint_every", "threads", "device", "distributed.",
                     "data.num_workers", "data.root", "data.download", "noise.cifar_n_dir", "model.pretrained")
# The parts of a run that checkpoint themselves (state_dict / load_state_dict), each under its own key.
STATEFUL = ("model", "optimizer", "scheduler", "state")


# ----------------------------------------------------------------------------------------------------------------
# The run: everything one training run holds (on one rank)


@dataclass
class Run:
    cfg: C.Config  # resolved: automatic choices filled in
    splits: Splits
    model_args: dict[str, Any]  # build_model(**model_args) rebuilds the network
    model: nn.Module  # the plain network (evaluation, checkpoints)
    net: nn.Module  # what trains: the network, or its DDP wrapper under torch.distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    method: Method
    state: SampleState
    dist: D.Dist
    device: torch.device
    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "val_acc": None, "test_acc": None})
    best_weights: dict[str, Tensor] | None = None  # the selected epoch's weights (on the CPU)
    resumed_epochs: int | None = None  # restored from a checkpoint: the epochs its run was set to
    loaders: dict[tuple[LabelledDataset, bool], BatchLoader] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # the KnnmixWarnings building it gave (run.json keeps them)

    def resumed_line(self) -> str:
        """"resumed after epoch 2", and when this run ends at another epoch than the checkpoint's was set to, which."""
        if self.resumed_epochs in (None, self.cfg.epochs):
            return f"resumed after epoch {self.epoch}"
        return (f"resumed after epoch {self.epoch}; the run was set to end at epoch {self.resumed_epochs} and now "
                f"trains to epoch {self.cfg.epochs} (epochs {self.resumed_epochs} -> {self.cfg.epochs})")

    def close_loaders(self) -> None:
        """Stop the data loaders' worker processes (:meth:`BatchLoader.close`); a later pass makes new loaders."""
        for batches in self.loaders.values():
            batches.close()
        self.loaders.clear()

    # The services methods use (knnmix.methods.base.TrainContext)
    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def true_labels(self) -> Tensor | None:
        true = self.splits.train.true_labels
        return None if true is None else torch.from_numpy(true.copy())

    @property
    def truly_noisy(self) -> Tensor | None:
        true = self.splits.train.true_labels
        return None if true is None else torch.from_numpy(self.splits.train.given_labels != true)

    @property
    def subsampled(self) -> bool:
        return self.splits.bundle.epoch_rows is not None

    def embed_train_set(self) -> Bank:
        return embed(self, active_indices(self, self.epoch + 1))

    def neighbour_search(self) -> NeighbourSearch:
        if self.cfg.method.search == "faiss":
            return FaissSearch(threads=self.cfg.threads)
        return TorchSearch(device=self.device)


def serving(splits: Splits) -> dict[str, Any]:
    """What a served network needs beside its weights: the class names of its outputs and the per-channel ``mean``
    and ``std`` (of pixels in [0, 1]) its training images were normalised with (absent for a source without)."""
    norm = getattr(splits.train.source, "normalise", None)
    return {"classes": list(splits.train.classes), **(norm.values if norm is not None else {})}


def build_run(
    cfg: C.Config, *, dist: D.Dist | None = None, device: torch.device | None = None, splits: Splits | None = None
) -> Run:
    """The splits, network, optimiser, schedule, method and per-sample state of ``cfg`` (identical on every rank)."""
    dist = dist or D.current()
    device = device or resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # Weight decay drives many weights and gradients into the subnormal range, where x86 CPUs slow down by an order
    # of magnitude: flushing them to zero made small-CNN epochs ~25% faster (Fashion-MNIST, 2 threads).
    torch.set_flush_denormal(True)
    with recording_warnings() as noted:  # the data's and the schedule's warnings, kept in run.json
        splits, cfg = build_data(cfg, splits)
        model_args = network_args(cfg, splits)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(**model_args, pretrained=cfg.model.pretrained).to(device)
        net: nn.Module = model
        if dist.active:
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_optimizer(cfg.optim, model)
        method = METHODS.get(cfg.method.name)(cfg.method, splits.num_classes)
        if not isinstance(method, Method):
            raise KnnmixError(f"method {cfg.method.name!r}: its registered factory made a {type(method).__name__}, "
                              "not a knnmix.methods.Method")
        note = method.schedule_note(cfg.epochs)
        if note and dist.is_main:
            warnings.warn(note, KnnmixWarning, stacklevel=2)
    return Run(
        cfg=cfg, splits=splits, model_args=model_args, model=model, net=net, optimizer=optimizer,
        scheduler=make_lr_schedule(cfg.optim, optimizer, cfg.epochs), method=method,
        state=SampleState.initial(splits.train.given_tensor(), splits.num_classes, cfg.method.k),
        dist=dist, device=device, warnings=noted,
    )


@contextlib.contextmanager
def process_settings_kept() -> Iterator[None]:
    """Give torch's thread count and denormal flushing, which :func:`build_run` sets for a run, back to the caller."""
    threads = torch.get_num_threads()
    # (torch has no getter: a subnormal float32 on the CPU reads as zero while flushing is on)
    flushing = torch.tensor([1e-40], dtype=torch.float32, device="cpu").item() == 0.0
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flushing)


def build_data(cfg: C.Config, splits: Splits | None = None) -> tuple[Splits, C.Config]:
    """The splits of ``cfg`` and the config resolved against them, checked against the data (``method.k``): what
    fails on a bad ``data.root`` or a setting the data cannot take, before a run is replaced (Ray Train's driver)."""
    splits = splits or build_splits(cfg)
    cfg = resolve_config(cfg, splits)
    n, bank = len(splits.train), "the training set"
    if (draw := splits.bundle.epoch_rows) is not None:  # each epoch searches its own class-balanced draw
        n, bank = len(draw(1, cfg.seed)), f"an epoch's draw (data.epoch_samples={cfg.data.epoch_samples})"
    for key in ("k", "vote_k"):  # (of a method that reads them: ce's default vote_k is no error on 10 images)
        if f"method.{key}" not in C.unread_keys(cfg) and (value := getattr(cfg.method, key)) >= n:
            raise ConfigError(f"method.{key}={value} is not smaller than {bank} ({n} samples)")
    return splits, cfg


def network_args(cfg: C.Config, splits: Splits) -> dict[str, Any]:
    """``build_model(**network_args(...))`` builds the run's network (``cfg`` resolved: :func:`build_data`)."""
    c, h, _ = splits.train.source.shape
    return {"name": cfg.model.name, "num_classes": splits.num_classes, "in_channels": c, "image_size": h}


def check_buildable(cfg: C.Config) -> None:
    """Build what a run builds first and can fail on (a bad ``data.root``, ``method.k`` too large for the data, a
    missing or unfitting ``model.pretrained``), without a device or process group: Ray Train's driver checks this
    before it replaces a run or starts workers that would fail alike."""
    splits, cfg = build_data(cfg)
    if cfg.model.pretrained is not None:
        build_model(**network_args(cfg, splits), pretrained=cfg.model.pretrained)


def resolve_config(cfg: C.Config, splits: Splits) -> C.Config:
    """Fill the config's automatic choices so that the saved config states exactly what ran."""
    changes: dict[str, Any] = {}
    if cfg.model.name == "auto":
        changes["model.name"] = splits.bundle.default_model
    if cfg.noise.seed is None:
        changes["noise.seed"] = cfg.seed
    if cfg.noise.spec != splits.noise.spec:  # auto, or a spec as typed (" Symmetric:0.40", "pairflip:0")
        changes["noise.spec"] = splits.noise.spec
    if cfg.data.image_size is None and "image_size" in dataset_options(cfg.data.name):
        changes["data.image_size"] = splits.train.source.shape[1]  # the side the data set chose
    return C.replace(cfg, **changes) if changes else cfg


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def make_optimizer(o: C.OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
            weight_decay=o.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def make_lr_schedule(o: C.OptimConfig, opt: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule."""
    if o.schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=o.restart_period, eta_min=o.min_lr)
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=o.min_lr)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def cosine_lr(base: float, low: float, step: int, steps: int) -> float:
    """The learning rate of a cosine schedule from ``base`` to ``low`` over ``steps`` epochs, after ``step`` of them."""
    return low + (base - low) * (1 + math.cos(math.pi * step / steps)) / 2


def stretch_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> None:
    """Fit a restored cosine schedule to the run's ``epochs`` (a resume may extend a run): the saved one keeps the
    old length, so the extra epochs would train at a learning rate of 0 and then a rising one."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == epochs:
        return
    scheduler.T_max = epochs
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = cosine_lr(base, scheduler.eta_min, scheduler.last_epoch, epochs)


# ----------------------------------------------------------------------------------------------------------------
# Loading batches


Batch = tuple[int, Tensor]  # (seed of the batch's augmentation, member indices (B, M))


class _SeededBatches:
    """What the ``DataLoader`` loads: a whole :data:`Batch` per index."""

    def __init__(self, ds: LabelledDataset) -> None:
        self.ds = ds

    def __getitems__(self, batch: Batch) -> Tensor:
        """Images ``(B, M, C, H, W)`` of a batch's members; augmentation draws from the batch's own seed, so the
        result does not depend on which process loads it (and a resumed epoch replays exactly). Only the CPU
        generator, the one forked here: ``torch.manual_seed`` also re-seeded CUDA's for good (on a GPU, the
        training's own draws then depended on whether batches load in this process or in workers), and formatted a
        stack trace per batch for the seeds of devices not yet initialised (~3% of a small CPU run)."""
        seed, members = batch
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            x, _, _ = self.ds.__getitems__(members.reshape(-1))
        return x.view(*members.shape, *x.shape[1:])


class BatchLoader:
    """Loads the batches of one dataset view for the whole run.

    It is one ``DataLoader`` (loading in this process with ``data.num_workers=0``, else in worker processes that
    persist across epochs) whose batch sampler is this object, handed the next pass's batches by :meth:`__call__`.
    """

    def __init__(self, ds: LabelledDataset, workers: int, device: torch.device) -> None:
        self.device = device
        self._batches: list[Batch] = []
        self._loader: DataLoader | None = DataLoader(
            _SeededBatches(ds), batch_sampler=self, collate_fn=collate_batch, num_workers=workers,  # type: ignore[arg-type]
            persistent_workers=workers > 0, pin_memory=workers > 0 and device.type == "cuda",
            generator=torch.Generator(),  # its seed draw must not advance the global generator the method uses
        )

    def close(self) -> None:
        """Stop the worker processes now. Left to the garbage collector (the DataLoader refers back to this object,
        its batch sampler), they lived on after the run, and the collection that found them waited 5 s per worker
        for them to exit (``DataLoader``'s shutdown timeout) in whatever ran then."""
        self._loader = None  # the only reference to the DataLoader: its persistent iterator shuts its workers down

    def __iter__(self) -> Iterator[Batch]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def __call__(self, batches: Iterable[Batch]) -> Iterator[tuple[Tensor, Tensor]]:
        """``(members (B, M), images (B, M, C, H, W) on the device)`` for each batch."""
        if self._loader is None:
            raise RuntimeError("this BatchLoader is closed (knnmix.engine.train.loader makes a new one)")
        self._batches = list(batches)
        for (_, members), x in zip(self._batches, self._loader):
            yield members, x.to(self.device, non_blocking=True)


def loader(run: Run, ds: LabelledDataset, *, augment: bool) -> BatchLoader:
    """The run's one loader of ``ds`` (with or without augmentation), made on first use."""
    key = (ds, augment)
    if key not in run.loaders:
        run.loaders[key] = BatchLoader(ds.view(augment=augment), run.cfg.data.num_workers, run.device)
    return run.loaders[key]


def active_indices(run: Run, epoch: int) -> Tensor:
    """Dataset indices that take part in ``epoch`` (all, unless the dataset subsamples per epoch)."""
    rows_of_epoch = run.splits.bundle.epoch_rows
    if rows_of_epoch is None:
        return torch.arange(len(run.splits.train))
    wanted = rows_of_epoch(epoch, run.cfg.seed)
    return torch.from_numpy(np.flatnonzero(np.isin(run.splits.train_rows, wanted)))


# ----------------------------------------------------------------------------------------------------------------
# One epoch


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every global generator from (seed, epoch, rank), so a resumed epoch replays exactly."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank * 7_919) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def run_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One epoch: the method's preparation phases, one training pass, evaluation."""
    cfg = run.cfg
    seed_epoch(cfg.seed, epoch, run.dist.rank)
    t0 = time.perf_counter()
    run.method.prepare_epoch(epoch, run)
    lr = run.optimizer.param_groups[0]["lr"]
    train_loss = train_one_epoch(run, epoch)
    run.scheduler.step()
    t1 = time.perf_counter()
    tested = epoch == cfg.epochs or (cfg.test_every > 0 and epoch % cfg.test_every == 0)
    record: dict[str, Any] = {
        "epoch": epoch, "phase": run.method.phase, "lr": lr, "train_loss": train_loss,
        "val_acc": evaluate(run, run.splits.val),
        "test_acc": evaluate(run, run.splits.test) if tested else None,
    }
    for name, ds in run.splits.extra_tests.items():
        record[f"test_acc_{name}"] = evaluate(run, ds) if tested else None
    record.update(label_diagnostics(run))
    record.update(run.method.diagnostics(run))
    record.update(train_time_s=t1 - t0, eval_time_s=time.perf_counter() - t1)
    return record


def train_one_epoch(run: Run, epoch: int) -> float:
    """One pass over this rank's shard of the epoch's training samples; returns the mean loss over all ranks."""
    per_rank = run.cfg.optim.batch_size // run.dist.world_size
    batches = D.epoch_batches(active_indices(run, epoch), per_rank, run.dist, seed=run.cfg.seed, epoch=epoch)
    base = (run.cfg.seed * 1_000_003 + epoch * 10_007 + run.dist.rank * 101) * 100_003
    members = ((base + i, run.method.batch_members(b, run)) for i, b in enumerate(batches))
    run.net.train()
    total = torch.zeros(2, dtype=torch.float64)
    train = run.splits.train
    for m, images in loader(run, train, augment=train.augment)(members):
        loss = run.method.loss(run.net, images, m, run)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        value = loss.detach().double().item()
        if not run.dist.active and not math.isfinite(value):  # under DDP all ranks stop together, below
            diverged(run, epoch, value)
        total += torch.tensor([value * m.shape[0], m.shape[0]], dtype=torch.float64)
    total = D.all_reduce_sum(total, run.dist)
    mean = float(total[0] / total[1])
    if not math.isfinite(mean):
        diverged(run, epoch, mean)
    return mean


def diverged(run: Run, epoch: int, value: float) -> None:
    last = next((r for r in reversed(run.history) if math.isfinite(r.get("train_loss", math.nan))), None)
    before = f"last finite epoch loss {last['train_loss']:.4g} in epoch {last['epoch']}" if last else "no finite epoch before"
    raise DivergedError(f"training diverged in epoch {epoch}: the loss became {value} ({before}); lower optim.lr "
                        f"(now {run.cfg.optim.lr:g})")


def infer(run: Run, ds: LabelledDataset, positions: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(positions (B,), logits (B, C), features (B, D))`` of the current model over ``ds`` at ``positions``, without
    augmentation, in batches of ``optim.eval_batch_size`` (BatchNorm statistics from rank 0 on every rank)."""
    if run.dist.active:
        for b in run.model.buffers():
            b.copy_(D.broadcast(b.detach(), 0, run.dist))
    size = run.cfg.optim.eval_batch_size
    chunks = ((0, positions[s : s + size][:, None]) for s in range(0, positions.numel(), size))
    run.model.eval()
    try:
        with torch.inference_mode():
            for m, x in loader(run, ds, augment=False)(chunks):
                logits, features = run.model(x[:, 0])
                yield m[:, 0], logits.float(), features
    finally:
        run.model.train()


def evaluate(run: Run, ds: LabelledDataset | None) -> float | None:
    """Accuracy (%) against the dataset's given labels, sharded over ranks."""
    if ds is None or len(ds) == 0:
        return None
    labels = ds.given_tensor()
    counts = torch.zeros(2, dtype=torch.float64)
    for pos, logits, _ in infer(run, ds, D.shard(torch.arange(len(ds)), run.dist)):
        counts += torch.tensor([float((logits.argmax(1).cpu() == labels[pos]).sum()), pos.numel()], dtype=torch.float64)
    counts = D.all_reduce_sum(counts, run.dist)
    return 100.0 * float(counts[0] / counts[1])


def embed(run: Run, indices: Tensor) -> Bank:
    """Features and log-probabilities of training samples ``indices``, without augmentation, gathered across ranks."""
    positions = D.shard(indices, run.dist)
    feats, logps = [torch.empty(0, run.model.feature_dim)], [torch.empty(0, run.splits.num_classes)]
    for _, logits, f in infer(run, run.splits.train, positions):
        feats.append(l2_normalise(f).cpu())
        logps.append(F.log_softmax(logits, dim=1).cpu())
    bank = gather_bank(positions, torch.cat(feats), torch.cat(logps), run.dist)
    if not (bool(torch.isfinite(bank.features).all()) and bool(torch.isfinite(bank.log_probs).all())):
        # (the same bank on every rank: all stop together) the mixture fit would skip these samples as not evaluated
        raise DivergedError(f"training diverged: after epoch {run.epoch}, the network's outputs on the training set "
                            f"are not finite; lower optim.lr (now {run.cfg.optim.lr:g})")
    return bank


def predict(run: Run, ds: LabelledDataset) -> Tensor:
    """Predicted class probabilities ``(len(ds), C)`` of the current model (this process only)."""
    out = torch.empty(len(ds), run.splits.num_classes)
    for pos, logits, _ in infer(run, ds, torch.arange(len(ds))):
        out[pos] = torch.softmax(logits, dim=1).cpu()
    return out


def label_diagnostics(run: Run) -> dict[str, Any]:
    """Where true labels are known: label-correction accuracy and the clean/noisy split quality."""
    true = run.true_labels
    if true is None:
        return {}
    out: dict[str, Any] = {}
    current = run.state.corrected_labels()
    if run.method.uses_soft_targets:
        out["label_acc"] = 100.0 * float((current == true).double().mean())
    if run.method.uses_clean_prob and run.state.loss_history.shape[0] > 0:
        predicted_noisy = run.state.clean_prob < 0.5
        truly_noisy = current != true
        hits = float((predicted_noisy & truly_noisy).sum())
        out["noisy_precision"] = 100.0 * hits / float(predicted_noisy.sum()) if predicted_noisy.any() else None
        out["noisy_recall"] = 100.0 * hits / float(truly_noisy.sum()) if truly_noisy.any() else None
    return out


# ----------------------------------------------------------------------------------------------------------------
# The loop


def is_checkpoint_epoch(cfg: C.Config, epoch: int) -> bool:
    return epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs


def fit(run: Run, folder: RunFolder | None, *, echo: Echo = print, on_epoch: OnEpoch | None = None) -> dict[str, Any]:
    """Train the remaining epochs, then :func:`finish`. ``folder`` (rank 0 only) receives every output. The run's
    data loaders (and their worker processes) are closed when it returns or stops."""
    try:
        return _fit(run, folder, echo=echo, on_epoch=on_epoch)
    finally:
        run.close_loaders()


def _fit(run: Run, folder: RunFolder | None, *, echo: Echo, on_epoch: OnEpoch | None) -> dict[str, Any]:
    cfg = run.cfg
    say = echo if run.dist.is_main and echo is not None else None
    if say:
        say(report.banner(run))
    summary = None
    if folder is not None and run.epoch:  # resumed: model_best.pt is the checkpoint's selection
        keep_best_model(run, folder)
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        record = run_epoch(run, epoch)
        run.epoch = epoch
        run.history.append(record)
        improved = track_best(run, record)
        if folder is not None:
            folder.append_metrics(record)
            if improved:
                folder.save_best_model(run.model_args, run.model.state_dict(), serving(run.splits), epoch)
            if is_checkpoint_epoch(cfg, epoch):
                folder.save_checkpoint(checkpoint(run))
        if say and (epoch % cfg.log_every == 0 or epoch == cfg.epochs):
            per_epoch = sum(r["train_time_s"] + r["eval_time_s"] for r in run.history) / len(run.history)
            say(report.progress_line(record, cfg.epochs, eta_s=per_epoch * (cfg.epochs - epoch)))
        if epoch == cfg.epochs:
            summary = finish(run, folder, echo=say)
        if on_epoch is not None:
            on_epoch(run, record, summary)
    return summary if summary is not None else finish(run, folder, echo=say)


def track_best(run: Run, record: dict[str, Any]) -> bool:
    """Select on the noisy validation accuracy (first best epoch wins ties)."""
    val = record.get("val_acc")
    if val is None or (run.best["val_acc"] is not None and val <= run.best["val_acc"]):
        return False
    run.best = {"epoch": record["epoch"], "val_acc": val, "test_acc": record.get("test_acc")}
    # kept: tested at the end if test_every skipped this epoch, and checkpointed while later epochs are not selected
    run.best_weights = cpu_weights(run.model)
    return True


def cpu_weights(model: nn.Module) -> dict[str, Tensor]:
    """A copy of ``model``'s weights on the CPU (the selected epoch's, kept while training goes on)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def keep_best_model(run: Run, folder: RunFolder) -> None:
    """A resumed run's ``model_best.pt`` holds its checkpoint's selected epoch: a run killed after it saved a later
    selection (before the next checkpoint) held the weights of an epoch the resumed run does not have, which the
    summary then named as another and MLflow logged as such."""
    if not run.best["epoch"] or run.best_weights is None:
        return
    path = folder.file(BEST_MODEL)
    with contextlib.suppress(CheckpointError):  # (a damaged one is written again)
        if path.exists() and safe_load(path).get("epoch") == run.best["epoch"]:
            return
    folder.save_best_model(run.model_args, run.best_weights, serving(run.splits), run.best["epoch"])


def finish(run: Run, folder: RunFolder | None, *, echo: Echo = None) -> dict[str, Any]:
    """Test the selected weights if no epoch did, audit every training label with the final model, write
    ``summary.json`` and ``label_issues.csv`` (rank 0; and ``model_best.pt`` of the last epoch without a validation
    split). Every rank calls it (the passes are collective)."""
    if run.best["epoch"] and run.best["test_acc"] is None and run.best_weights is not None:
        final = {k: v.clone() for k, v in run.model.state_dict().items()}
        run.model.load_state_dict(run.best_weights)
        run.best["test_acc"] = evaluate(run, run.splits.test)
        run.model.load_state_dict(final)
    bank = embed(run, torch.arange(len(run.splits.train)))
    summary = report.summary(run)
    if folder is not None:
        if run.splits.val is None:  # nothing selects an epoch: model_best.pt (what is logged and served) is the last
            folder.save_best_model(run.model_args, run.model.state_dict(), serving(run.splits), run.epoch)
        summary["label_issues"] = report.label_audit(run, bank, folder)
        folder.write_summary(summary)
        if echo:
            echo(report.done_line(summary, folder))
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint(run: Run) -> dict[str, Any]:
    """Everything needed to continue the method exactly where it stands (tensors and plain data only)."""
    payload = {
        "format": FORMAT,
        "commit": git_commit(),
        "config": C.to_dict(run.cfg),
        "data": run.splits.fingerprint,
        **({"files": run.splits.files} if run.splits.files else {}),
        "epoch": run.epoch,
        "model_args": dict(run.model_args),
        **{part: getattr(run, part).state_dict() for part in STATEFUL},
        "history": list(run.history),
        "best": dict(run.best),
        "rng": rng_state(),
        "serving": serving(run.splits),  # (load_predictor of a checkpoint normalises as training did)
    }
    if run.best_weights is not None and run.best["epoch"] != run.epoch:  # (else they are the model's)
        payload["best_weights"] = run.best_weights
    return payload


def restore(run: Run, ckpt: dict[str, Any], source: str = "the checkpoint") -> None:
    """Continue from a checkpoint (the config must match except for paths, resources and ``epochs``); contents that
    do not fit the run (shapes, types) are a :class:`CheckpointError` naming ``source``."""
    try:
        _restore(run, ckpt)
    except KnnmixError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"{source} does not fit this run (damaged or edited?): {one_line(exc, 200)}") from None


#: After the error of a checkpoint that ``--resume`` cannot continue from: what else the user can do.
AFRESH = "; if it cannot be mended, --overwrite in place of --resume starts the run afresh (or choose another --out)"


@contextlib.contextmanager
def saying_how_to_start_afresh(resume: bool) -> Iterator[None]:
    """A :class:`CheckpointError` of a ``resume`` (a run the user asked to continue: not a sweep trial's, nor Ray
    Train's restart of a run that was not resumed) says how to start afresh instead."""
    try:
        yield
    except CheckpointError as exc:
        if not resume:
            raise
        raise CheckpointError(f"{exc}{AFRESH}") from None


def canonical_noise(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with its noise spec canonical, as :func:`resolve_config` now records it (a run saved
    before 2026-12-02 kept the spec as typed, e.g. "Symmetric:0.40")."""
    spec = saved.get("noise", {}).get("spec")
    if not isinstance(spec, str) or spec == "auto":
        return saved
    try:
        canonical = str(parse_noise_spec(spec))
    except KnnmixError:
        return saved  # a spec no longer known: the comparison names it
    return {**saved, "noise": {**saved["noise"], "spec": canonical}}


def _restore(run: Run, ckpt: dict[str, Any]) -> None:
    if shown := C.differences(canonical_noise(ckpt["config"]), C.to_dict(run.cfg), 4, RESUMABLE_CHANGES):
        raise ConfigError(f"cannot resume with a different config ({shown}); only paths, resources and epochs may "
                          "change")
    epoch, history = ckpt["epoch"], list(ckpt["history"])
    if type(epoch) is not int or [r["epoch"] for r in history] != list(range(1, epoch + 1)):  # (epoch >= 0 too)
        raise ValueError(f"its epoch {epoch!r} and the epochs of its history do not agree")
    if epoch > run.cfg.epochs:
        raise ConfigError(f"epochs={run.cfg.epochs} is fewer than the {epoch} epochs already trained")
    if ckpt.get("data", run.splits.fingerprint) != run.splits.fingerprint:  # (checkpoints before 2026-12-02: none)
        raise ConfigError("cannot resume on other data: the noisy labels or the train / validation rows differ from "
                          "the checkpoint's, and its per-sample state is aligned to them")
    if ckpt.get("files", run.splits.files) != run.splits.files:  # (checkpoints before 2026-12-03: not checked)
        raise ConfigError("cannot resume on other data: image files were replaced since the checkpoint (same labels "
                          "and rows, other file sizes), and its per-sample state is aligned to the old ones")
    for part in STATEFUL:
        getattr(run, part).load_state_dict(ckpt[part])
    stretch_schedule(run.scheduler, run.cfg.epochs)
    run.epoch, run.history = epoch, history
    run.best = dict(ckpt["best"])
    run.best_weights = ckpt.get("best_weights")
    if run.best_weights is None and run.best["epoch"] == epoch:  # selected at the checkpoint's own epoch
        run.best_weights = cpu_weights(run.model)
    run.resumed_epochs = ckpt["config"].get("epochs")
    set_rng_state(ckpt["rng"])


def resume_or_replace(holder: Callable[[], str | None], *, resume: bool, overwrite: bool, missing: str,
                      another: str = "--out") -> bool:
    """Never mix two runs in one place, which ``holder()`` names when it holds one (asked only once the flags agree):
    ``resume`` continues it (without one, the error says what is ``missing``), ``overwrite`` replaces it, else refuse
    and point to ``another`` place. Returns whether the caller must delete the run the place holds."""
    if resume and overwrite:
        raise KnnmixError("--resume and --overwrite exclude each other")
    held = holder()
    if resume and held is None:
        raise KnnmixError(f"nothing to resume: {missing}")
    if held is not None and not resume and not overwrite:
        raise KnnmixError(f"{held} already holds a run; pass --resume to continue it, --overwrite to replace it, or "
                          f"choose another {another}")
    return held is not None and not resume


def prepare_folder(folder: RunFolder, *, resume: bool, overwrite: bool) -> bool:
    """Refuse to mix two runs in one folder: continue it (resume), replace it (overwrite: returns True), or fail."""
    return resume_or_replace(lambda: f"run folder {str(folder.path)!r}" if folder.has_run() else None,
                             resume=resume, overwrite=overwrite,
                             missing=f"{str(folder.path / 'checkpoint.pt')!r} does not exist")


def train(
    cfg: C.Config, *, resume: bool = False, overwrite: bool = False, echo: Echo = print,
    on_epoch: OnEpoch | None = None,
) -> dict[str, Any]:
    """Train one run into ``cfg.out`` and return its summary (see ``summary.json``).

    An existing run in ``cfg.out`` is continued with ``resume``, replaced with ``overwrite``, else an error; a folder
    another process is writing into is an error too. ``cfg`` may also be a nested dict
    (:func:`knnmix.config.from_dict`); a config changed after it was built is checked again. The run seeds torch's,
    numpy's and Python's global random generators with ``cfg.seed``; torch's thread count (``threads``) and its
    flushing of denormal numbers are the caller's again when it returns.
    """
    if not isinstance(cfg, (C.Config, dict)):
        raise ConfigError(f"train needs a knnmix.config.Config (or a dict of its keys), got {type(cfg).__name__}")
    cfg = C.from_dict(C.to_dict(cfg) if isinstance(cfg, C.Config) else cfg)  # attributes set by hand are checked too
    if cfg.distributed.workers > 0:  # (it trained in this one process and recorded the workers as if they had run)
        raise ConfigError(f"distributed.workers={cfg.distributed.workers}: train() trains in this process; Ray Train "
                          "workers train with knnmix.scale.train.train_distributed(cfg) (as `knnmix train` does)")
    folder = RunFolder(cfg.out)
    with folder_lock(folder.path), process_settings_kept():
        replace = prepare_folder(folder, resume=resume, overwrite=overwrite)
        run = build_run(cfg)  # a config or data error leaves the run it would replace in place
        if replace:
            folder.clear()
        if resume:
            with saying_how_to_start_afresh(resume):
                restore(run, folder.load_checkpoint(), str(folder.file(CHECKPOINT)))
            folder.resumed(run.cfg, run.epoch, run.history, run.warnings)
            if echo:
                echo(run.resumed_line())
        else:
            folder.start(run.cfg, run.splits.noisy_labels_record(), run.warnings)
        return fit(run, folder, echo=echo, on_epoch=on_epoch)
