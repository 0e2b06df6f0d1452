"""The training loop: one engine for every method, in one process or as one rank of a data-parallel group.

:func:`train` is the entry point. An :class:`Engine` builds the splits, network, optimiser, schedule, method and
per-sample state from a config, then each epoch runs the method's preparation phases, one training pass, and an
evaluation on the noisy validation split (for selection) and on the test split (reported only). Under
``torch.distributed`` every rank runs the same code on its own shard; with no process group it is a plain loop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from knnmix import config as C
from knnmix.audit import find_label_issues, plot_label_issues, write_label_issues
from knnmix.data import LabelledDataset, collate_batch
from knnmix.engine import dist as D
from knnmix.engine.outputs import BEST_MODEL, LABEL_ISSUES, LABEL_ISSUES_PLOT, RunFolder
from knnmix.engine.phases import Bank, gather_bank
from knnmix.engine.splits import Splits, build_splits
from knnmix.engine.state import SampleState
from knnmix.errors import ConfigError, KnnmixError
from knnmix.method import SEARCH_BACKENDS, NeighbourSearch, l2_normalise
from knnmix.methods import METHODS
from knnmix.models import build_model
from knnmix.provenance import git_commit

Callback = Callable[["Engine", dict[str, Any]], None]

# Config keys that may differ between a checkpoint and the run that resumes it (paths, resources, length).
RESUMABLE_CHANGES = ("epochs", "out", "log_every", "checkpoint_every", "threads", "device", "distributed.",
                     "data.num_workers", "data.root", "data.download", "noise.cifar_n_dir", "model.pretrained")


def train(
    cfg: C.Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train one run into ``cfg.out`` and return its summary (see ``summary.json``).

    An existing run in ``cfg.out`` is continued with ``resume``, replaced with ``overwrite``, else an error.
    """
    folder = RunFolder(cfg.out)
    if resume and overwrite:
        raise KnnmixError("--resume and --overwrite exclude each other")
    check_run_folder(folder, resume=resume, overwrite=overwrite)
    engine = Engine(cfg, echo=echo, folder=folder)
    if resume:
        engine.restore(folder.load_checkpoint())
    else:
        engine.start_outputs()
    return engine.fit()


def check_run_folder(folder: RunFolder, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder: continue it (resume), replace it (overwrite), or fail."""
    if folder.has_run() and not resume:
        if not overwrite:
            raise KnnmixError(
                f"run folder {str(folder.path)!r} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        folder.clear()
    if resume and not folder.has_run():
        raise KnnmixError(f"nothing to resume: {str(folder.path / 'checkpoint.pt')!r} does not exist")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every global generator from (seed, epoch, rank), so a resumed epoch replays exactly."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank * 7_919) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Engine:
    """One run of one method; in a process group, one rank of it (every rank builds the same Engine)."""

    AUDIT_PLOT_SIZE = 32  # suspects shown in label_issues.png

    def __init__(
        self,
        cfg: C.Config,
        *,
        dist: D.Dist | None = None,
        device: torch.device | None = None,
        splits: Splits | None = None,
        folder: RunFolder | None = None,
        echo: Callable[[str], None] | None = print,
    ) -> None:
        self.dist = dist or D.current()
        self.device = device or resolve_device(cfg.device)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        # Weight decay drives many weights and gradients into the subnormal range, where x86 CPUs slow down by an
        # order of magnitude: flushing them to zero made small-CNN epochs ~25% faster and stopped them slowing down
        # as training went on (measured on Fashion-MNIST, 2 threads). Results change only below 1e-38.
        torch.set_flush_denormal(True)
        self.splits = splits or build_splits(cfg)
        cfg = self._resolve(cfg)
        self.cfg = cfg
        self.seed = cfg.seed
        self.folder = folder if self.dist.is_main else None
        self.echo = echo if self.dist.is_main else None
        train = self.splits.train
        n = len(train)
        if cfg.method.k >= n:
            raise ConfigError(f"method.k={cfg.method.k} is not smaller than the training set ({n} samples)")
        c, h, w = train.source.shape
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(
            cfg.model.name, self.splits.num_classes, c, h, pretrained=cfg.model.pretrained
        ).to(self.device)
        self.net: nn.Module = self.model
        if self.dist.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(cfg.optim, self.model)
        self.scheduler = make_scheduler(cfg.optim, self.optimizer, cfg.epochs)
        self.method = METHODS.get(cfg.method.name)(cfg.method, self.splits.num_classes)
        self.state = SampleState.initial(train.given_tensor(), self.splits.num_classes, cfg.method.k)
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "val_acc": None, "test_acc": None}
        self._all = torch.arange(n)
        self._best_weights: dict[str, Tensor] | None = None  # kept only when test_every skipped the best epoch

    def _resolve(self, cfg: C.Config) -> C.Config:
        """Fill the config's automatic choices so that the saved config states exactly what ran."""
        changes: dict[str, Any] = {}
        if cfg.model.name == "auto":
            changes["model.name"] = self.splits.bundle.default_model
        if cfg.noise.seed is None:
            changes["noise.seed"] = cfg.seed
        return C.replace(cfg, **changes) if changes else cfg

    # ------------------------------------------------------------------------------------------------------------
    # Services for methods (TrainContext)

    def make_searcher(self) -> NeighbourSearch:
        if self.cfg.method.search == "faiss":
            return SEARCH_BACKENDS["faiss"](threads=self.cfg.threads)
        return SEARCH_BACKENDS["torch"](device=self.device)

    def embed_train_set(self, indices: Tensor | None = None) -> Bank:
        """Features and log-probabilities of the training set, without augmentation, gathered across ranks."""
        positions = D.shard(self.active_indices(self.epoch + 1) if indices is None else indices, self.dist)
        self._sync_buffers()
        self.model.eval()
        feats, logps = [], []
        with torch.inference_mode():
            for _, x in self._load(self.splits.train.view(augment=False), self._chunks(positions)):
                logits, f = self.model(x[:, 0])
                feats.append(l2_normalise(f).cpu())
                logps.append(F.log_softmax(logits.float(), dim=1).cpu())
        self.model.train()
        d = self.model.feature_dim
        features = torch.cat(feats) if feats else torch.empty(0, d)
        log_probs = torch.cat(logps) if logps else torch.empty(0, self.splits.num_classes)
        return gather_bank(positions, features, log_probs, self.dist)

    def active_indices(self, epoch: int) -> Tensor:
        """Dataset indices that take part in ``epoch`` (all, unless the dataset subsamples per epoch)."""
        rows_of_epoch = self.splits.bundle.epoch_rows
        if rows_of_epoch is None:
            return self._all
        wanted = rows_of_epoch(epoch, self.seed)
        return torch.from_numpy(np.flatnonzero(np.isin(self.splits.train_rows, wanted)))

    # ------------------------------------------------------------------------------------------------------------
    # The loop

    def start_outputs(self) -> None:
        if self.folder is not None:
            self.folder.start(self.cfg, self.splits.noisy_labels_record())

    def fit(self, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
        """Train the remaining epochs, then write the label audit and the summary."""
        self._say(self._banner())
        for epoch in range(self.epoch + 1, self.cfg.epochs + 1):
            record = self.run_epoch(epoch)
            self.epoch = epoch
            self.history.append(record)
            improved = self._track_best(record)
            if self.folder is not None:
                self.folder.append_metrics(record)
                if improved:
                    self.folder.save_best_model(self.model.state_dict())
                if epoch % self.cfg.checkpoint_every == 0 or epoch == self.cfg.epochs:
                    self.folder.save_checkpoint(self.checkpoint())
            if epoch % self.cfg.log_every == 0 or epoch == self.cfg.epochs:
                self._say(progress_line(record, self.cfg.epochs))
            for cb in callbacks:
                cb(self, record)
        return self.finish()

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch: the method's preparation phases, one training pass, evaluation."""
        seed_epoch(self.seed, epoch, self.dist.rank)
        t0 = time.perf_counter()
        phase = self.method.prepare_epoch(epoch, self)
        t1 = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self.train_pass(epoch)
        self.scheduler.step()
        t2 = time.perf_counter()
        record: dict[str, Any] = {
            "epoch": epoch,
            "phase": phase,
            "lr": lr,
            "train_loss": train_loss,
            "val_acc": self.evaluate(self.splits.val),
        }
        tested = epoch == self.cfg.epochs or (self.cfg.test_every > 0 and epoch % self.cfg.test_every == 0)
        record["test_acc"] = self.evaluate(self.splits.test) if tested else None
        for name, ds in self.splits.extra_tests.items():
            record[f"test_acc_{name}"] = self.evaluate(ds) if tested else None
        record.update(self.diagnostics())
        record.update(prep_time_s=t1 - t0, train_time_s=t2 - t0, eval_time_s=time.perf_counter() - t2)
        return record

    def train_pass(self, epoch: int) -> float:
        """One pass over this rank's shard of the epoch's training samples; returns the mean loss over all ranks."""
        per_rank = self.cfg.optim.batch_size // self.dist.world_size
        batches = D.epoch_batches(self.active_indices(epoch), per_rank, self.dist, seed=self.seed, epoch=epoch)
        members = (self.method.batch_members(b, self) for b in batches)
        self.net.train()
        total = torch.zeros(2, dtype=torch.float64)
        for m, images in self._load(self.splits.train, members, epoch=epoch):
            loss = self.method.loss(self.net, images, m, self)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += torch.tensor([loss.detach().double().item() * m.shape[0], m.shape[0]], dtype=torch.float64)
        total = D.all_reduce_sum(total, self.dist)
        mean = float(total[0] / total[1])
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss became {mean} in epoch {epoch}; lower optim.lr")
        return mean

    def evaluate(self, ds: LabelledDataset | None) -> float | None:
        """Accuracy (%) against the dataset's given labels, sharded over ranks."""
        if ds is None or len(ds) == 0:
            return None
        self._sync_buffers()
        self.model.eval()
        labels = ds.given_tensor()
        counts = torch.zeros(2, dtype=torch.float64)
        with torch.inference_mode():
            for m, x in self._load(ds.view(augment=False), self._chunks(D.shard(torch.arange(len(ds)), self.dist))):
                logits, _ = self.model(x[:, 0])
                counts[0] += (logits.argmax(1).cpu() == labels[m[:, 0]]).sum().item()
                counts[1] += m.shape[0]
        self.model.train()
        counts = D.all_reduce_sum(counts, self.dist)
        return 100.0 * float(counts[0] / counts[1])

    def predict(self, ds: LabelledDataset) -> Tensor:
        """Predicted class probabilities ``(len(ds), C)`` of the current model, without augmentation."""
        self._sync_buffers()
        self.model.eval()
        out = torch.empty(len(ds), self.splits.num_classes)
        with torch.inference_mode():
            for m, x in self._load(ds.view(augment=False), self._chunks(torch.arange(len(ds)))):
                logits, _ = self.model(x[:, 0])
                out[m[:, 0]] = torch.softmax(logits.float(), dim=1).cpu()
        self.model.train()
        return out

    def diagnostics(self) -> dict[str, Any]:
        """Where true labels are known: label-correction accuracy and the clean/noisy split quality."""
        true = self.splits.train.true_labels
        if true is None:
            return {}
        true_t = torch.from_numpy(true.copy())
        out: dict[str, Any] = {}
        current = self.state.corrected_labels()
        if self.method.uses_soft_targets:
            out["label_acc"] = 100.0 * float((current == true_t).double().mean())
        if self.method.uses_clean_prob and self.state.loss_history.shape[0] > 0:
            predicted_noisy = self.state.clean_prob < 0.5
            truly_noisy = current != true_t
            hits = float((predicted_noisy & truly_noisy).sum())
            out["noisy_precision"] = 100.0 * hits / float(predicted_noisy.sum()) if predicted_noisy.any() else None
            out["noisy_recall"] = 100.0 * hits / float(truly_noisy.sum()) if truly_noisy.any() else None
        return out

    def finish(self) -> dict[str, Any]:
        """Label audit of the final model over the whole training set, then ``summary.json``."""
        if self.best["epoch"] and self.best["test_acc"] is None:
            # test_every skipped the selected epoch: evaluate its weights now (selection used validation only)
            weights = self._best_weights
            best_file = RunFolder(self.cfg.out).file(BEST_MODEL)
            if weights is None and best_file.exists():  # resumed: the in-memory copy is gone
                weights = torch.load(best_file, map_location=self.device, weights_only=True)
            if weights is not None:
                final_weights = {k: v.clone() for k, v in self.model.state_dict().items()}
                self.model.load_state_dict(weights)
                self.best["test_acc"] = self.evaluate(self.splits.test)
                self.model.load_state_dict(final_weights)
        bank = self.embed_train_set(self._all)
        summary = self.summary()
        if self.folder is not None:
            audit = self.label_audit(bank)
            summary["label_issues"] = audit
            self.folder.write_summary(summary)
            self._say(
                f"done: last-epoch test acc {_pct(summary['final']['test_acc'])}, val-selected test acc "
                f"{_pct(summary['best_val']['test_acc'])} (epoch {summary['best_val']['epoch']}); "
                f"{audit['flagged']} labels flagged in {self.folder.file(LABEL_ISSUES)}"
            )
        return summary

    def label_audit(self, bank: Bank) -> dict[str, Any]:
        """Write ``label_issues.csv`` from the final model; return counts (and quality where truth is known)."""
        assert self.folder is not None
        train = self.splits.train
        given = train.given_labels[bank.index.numpy()]
        # The suggestion is the final model's prediction: the soft targets move slowly by design (momentum 0.9 every
        # correction_period epochs), so their argmax still names the given label long after the network disagrees.
        table = find_label_issues(given, bank.log_probs.exp().numpy(), seed=self.seed)
        table["index"] = bank.index.numpy()[table["index"]]
        extra: dict[str, Any] = {}
        if train.true_labels is not None:
            extra["true_label"] = train.true_labels
        source = train.source
        if source.path(0) is not None:
            extra["path"] = [source.path(int(r)) for r in train.rows]
        write_label_issues(
            self.folder.file(LABEL_ISSUES),
            table,
            rows=self.splits.train_rows,
            class_names=train.classes,
            extra=extra,
        )
        top = table["index"][: self.AUDIT_PLOT_SIZE]
        try:
            images = source.preview(torch.from_numpy(train.rows[top]))
        except NotImplementedError:
            images = None
        if images is not None:
            names = train.classes
            plot_label_issues(
                self.folder.file(LABEL_ISSUES_PLOT),
                images,
                [names[int(c)] for c in table["given_label"][: len(top)]],
                [names[int(c)] for c in table["corrected_label"][: len(top)]],
                table["clean_prob"][: len(top)],
                title=f"{self.cfg.data.name}: the {len(top)} labels most likely wrong ({self.cfg.method.name})",
            )
        flagged = table["is_label_issue"]
        out: dict[str, Any] = {"flagged": int(flagged.sum()), "total": int(len(flagged))}
        if train.true_labels is not None:
            wrong = train.given_labels[table["index"]] != train.true_labels[table["index"]]
            hits = int((flagged & wrong).sum())
            out["precision"] = 100.0 * hits / max(int(flagged.sum()), 1)
            out["recall"] = 100.0 * hits / max(int(wrong.sum()), 1)
            k = int(wrong.sum())
            out["precision_at_noisy_count"] = 100.0 * float(wrong[:k].mean()) if k else None
        return out

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        times = [r["train_time_s"] for r in self.history]
        return {
            "method": self.cfg.method.name,
            "dataset": self.cfg.data.name,
            "noise": self.cfg.noise.spec,
            "noise_rate": self.splits.noise.noise_rate,
            "train_noise_rate": _noise_rate(self.splits.train),
            "model": self.cfg.model.name,
            "seed": self.seed,
            "epochs": self.epoch,
            "train_size": len(self.splits.train),
            "val_size": len(self.splits.val) if self.splits.val is not None else 0,
            "final": {k: last.get(k) for k in ("val_acc", "test_acc", "label_acc", "noisy_precision", "noisy_recall")},
            "best_val": dict(self.best),
            "epoch_time_s": float(np.mean(times)) if times else None,
            "world_size": self.dist.world_size,
            "commit": git_commit(),
            "config": C.to_dict(self.cfg),
        }

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue the method exactly where it stands."""
        return {
            "format": 1,
            "config": C.to_dict(self.cfg),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": self.state.state_dict(),
            "history": list(self.history),
            "best": dict(self.best),
            "rng": rng_state(),
        }

    def restore(self, ckpt: dict[str, Any], *, state_shares: list[dict[str, Tensor]] | None = None) -> None:
        """Continue from a checkpoint (the config must match except for paths, resources and ``epochs``)."""
        check_resumable(ckpt["config"], C.to_dict(self.cfg))
        if ckpt["epoch"] > self.cfg.epochs:
            raise ConfigError(f"epochs={self.cfg.epochs} is fewer than the {ckpt['epoch']} epochs already trained")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if state_shares is not None:
            self.state.load_rows(state_shares)
        else:
            self.state.load_state_dict(ckpt["state"])
        self.epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.best = dict(ckpt["best"])
        set_rng_state(ckpt["rng"])
        if self.folder is not None:
            self.folder.write_metrics(self.history)
        self._say(f"resumed after epoch {self.epoch}")

    # ------------------------------------------------------------------------------------------------------------
    # Helpers

    def _chunks(self, positions: Tensor) -> Iterator[Tensor]:
        size = self.cfg.optim.eval_batch_size
        for start in range(0, positions.numel(), size):
            yield positions[start : start + size][:, None]

    def _load(
        self, ds: LabelledDataset, batches: Iterable[Tensor], *, epoch: int = 0
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(members (B, M), images (B, M, C, H, W))`` on the device for each batch of member indices."""
        workers = self.cfg.data.num_workers
        if workers == 0:
            for m in batches:
                x, _, _ = ds.__getitems__(m.reshape(-1))
                yield m, x.view(*m.shape, *x.shape[1:]).to(self.device, non_blocking=True)
            return
        listed = list(batches)
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch * 131 + self.dist.rank)
        loader = DataLoader(
            ds,
            batch_sampler=[m.reshape(-1).tolist() for m in listed],
            collate_fn=collate_batch,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            generator=g,
        )
        for m, (x, _, _) in zip(listed, loader):
            yield m, x.view(*m.shape, *x.shape[1:]).to(self.device, non_blocking=True)

    def _sync_buffers(self) -> None:
        """Evaluate the same model on every rank: BatchNorm statistics from rank 0."""
        if self.dist.active:
            for b in self.model.buffers():
                b.copy_(D.broadcast(b.detach(), 0, self.dist))

    def _track_best(self, record: dict[str, Any]) -> bool:
        val = record.get("val_acc")
        if val is None or (self.best["val_acc"] is not None and val <= self.best["val_acc"]):
            return False
        self.best = {"epoch": record["epoch"], "val_acc": val, "test_acc": record.get("test_acc")}
        if record.get("test_acc") is None:
            self._best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return True

    def _say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def _banner(self) -> str:
        c = self.cfg
        s = self.splits
        return (
            f"knnmix: {c.method.name} on {c.data.name} ({len(s.train)} train / "
            f"{len(s.val) if s.val is not None else 0} noisy val / {len(s.test) if s.test is not None else 0} test), "
            f"noise {c.noise.spec} (measured {100 * s.noise.noise_rate:.2f}%), {c.model.name}, "
            f"{c.epochs} epochs, seed {c.seed}, {self.dist.world_size} process(es) on {self.device}"
        )


def check_resumable(saved: dict[str, Any], wanted: dict[str, Any]) -> None:
    a, b = C.flatten(saved), C.flatten(wanted)
    diff = [
        k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not any(
            k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES
        )
    ]
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"cannot resume with a different config ({shown}); only paths, resources and epochs may change")


def make_optimizer(o: C.OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if o.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
            weight_decay=o.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def make_scheduler(o: C.OptimConfig, opt: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule."""
    if o.schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=o.restart_period, eta_min=o.min_lr)
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=o.min_lr)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def progress_line(r: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {r['epoch']:>3}/{epochs}",
        f"[{r['phase']}]",
        f"loss {r['train_loss']:.4f}",
        f"val {_pct(r['val_acc'])}",
        f"test {_pct(r['test_acc'])}",
    ]
    if r.get("label_acc") is not None:
        parts.append(f"labels {_pct(r['label_acc'])}")
    if r.get("noisy_precision") is not None or r.get("noisy_recall") is not None:
        parts.append(f"noisy P/R {_pct(r.get('noisy_precision'))}/{_pct(r.get('noisy_recall'))}")
    parts.append(f"lr {r['lr']:.4g}")
    parts.append(f"{r['train_time_s']:.1f}s")
    return "  ".join(parts)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}%"


def _noise_rate(ds: LabelledDataset) -> float | None:
    if ds.true_labels is None:
        return None
    return float(np.mean(ds.given_labels != ds.true_labels))
