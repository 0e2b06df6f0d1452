"""The run folder: what every run leaves behind, and checkpoints that load without running code.

``config.yaml`` (resolved config), ``run.json`` (commit, machine, command), ``noisy_labels.npz`` (the labels the
run trained on, so any run can be re-scored), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (resumes
the method exactly), ``model_best.pt`` (weights with the best noisy-validation accuracy and the network's
constructor arguments), ``summary.json`` (final and best-by-validation figures), ``label_issues.csv`` (the ranked
list for annotators) and ``label_issues.png`` (the top suspects with their given and suggested labels).

Checkpoints and weights files hold only tensors and plain data (dicts, lists, numbers, strings) and are read with
``torch.load(weights_only=True)``: loading a crafted file cannot run code. An unreadable or foreign file is a
one-line :class:`~knnmix.errors.CheckpointError` naming it. A folder in use is locked (:func:`folder_lock`), so two
runs never write into one folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from knnmix import config as C
from knnmix.errors import NO_SPACE, PATH_IN_THE_WAY, CheckpointError, KnnmixError, load_tensors, one_line
from knnmix.provenance import command, git_commit, machine, now

if TYPE_CHECKING:
    from knnmix.models import LogitsOnly

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LABEL_ISSUES = "label_issues.csv"
LABEL_ISSUES_PLOT = "label_issues.png"
NOISY_LABELS = "noisy_labels.npz"
CONFIG = "config.yaml"
BEST_MODEL = "model_best.pt"
RUN_INFO = "run.json"
LOCK = ".lock"
RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, LABEL_ISSUES, LABEL_ISSUES_PLOT, NOISY_LABELS, CONFIG, BEST_MODEL, RUN_INFO)

#: Version of the checkpoint and weights-file layout; files of another version are refused with a clear message.
FORMAT = 2
CHECKPOINT_KEYS = ("format", "config", "epoch", "model_args", "model", "optimizer", "scheduler", "state", "history",
                   "best", "rng")


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()  # '~/runs/x' is the home folder's, not a folder named '~' here

    def file(self, name: str) -> Path:
        return self.path / name

    def has_run(self) -> bool:
        return self.file(CHECKPOINT).exists()

    def clear(self) -> None:
        """Delete a previous run's files (only the files a run writes; anything else in the folder stays)."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)

    def start(self, cfg: C.Config, noisy_labels: dict[str, np.ndarray], warned: Sequence[str] = ()) -> None:
        """Write the run's fixed files; ``metrics.jsonl`` starts empty (a restart before the first checkpoint
        must not keep the failed attempt's lines). ``run.json`` keeps the KnnmixWarnings the run's set-up gave
        (``warnings``: ``warned``, when there were any)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(METRICS).unlink(missing_ok=True)
        self.file(CONFIG).write_text(C.to_yaml(cfg))
        np.savez_compressed(self.file(NOISY_LABELS), **noisy_labels)
        info = {
            "id": uuid.uuid4().hex,  # the run's own name: its MLflow run is found by it wherever the folder moves
            "commit": git_commit(),
            "command": command(),
            "started": now(),
            "machine": machine(),
            **({"warnings": list(warned)} if warned else {}),
        }
        self.file(RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")

    def resumed(self, cfg: C.Config, epoch: int, history: list[dict[str, Any]], warned: Sequence[str] = ()) -> None:
        """A run continued after ``epoch`` (a resume or a worker restart): its config now (``epochs`` and resources
        may have changed), its history, and in ``run.json`` who continued it, when, and the set-up's warnings now
        (``warned``: a longer run may no longer end before a phase)."""
        self.file(CONFIG).write_text(C.to_yaml(cfg))
        self.write_metrics(history)
        info = json.loads(self.file(RUN_INFO).read_text()) if self.file(RUN_INFO).exists() else {}
        info.setdefault("resumed", []).append({"after_epoch": epoch, "commit": git_commit(), "command": command(),
                                               "at": now()})
        info.pop("warnings", None)
        if warned:
            info["warnings"] = list(warned)
        atomic_write_text(self.file(RUN_INFO), json.dumps(info, indent=2) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the full history (so a resumed run never holds an epoch twice)."""
        atomic_write_text(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in history))

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self.file(METRICS), "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as exc:  # a line cut short is rewritten from the checkpoint's history on --resume
            raise KnnmixError(f"cannot write {str(self.file(METRICS))!r} ({exc.strerror or one_line(exc, 150)}): "
                              f"{then_resume(exc)}") from None

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        atomic_save(payload, self.file(CHECKPOINT))

    def load_checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.file(CHECKPOINT))

    def save_best_model(self, model_args: dict[str, Any], state_dict: dict[str, Any],
                        serving: dict[str, Any] | None = None, epoch: int | None = None) -> None:
        """A weights file: the network's constructor arguments (:func:`knnmix.models.build_model`), its weights, what
        serving it needs (:func:`knnmix.engine.train.serving`: class names, input normalisation) and the epoch."""
        atomic_save({"format": FORMAT, "model_args": dict(model_args), "state_dict": state_dict,
                     "serving": dict(serving or {}), "epoch": epoch}, self.file(BEST_MODEL))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.file(SUMMARY), json.dumps(summary, indent=2) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# Safe files


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    if tmp.is_dir():  # torch's "open file failed" read as a short write: the advice was to free space
        raise write_error(path, tmp, IsADirectoryError(errno.EISDIR, f"{tmp.name} is a folder in the way", str(tmp)))
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk is a RuntimeError of torch's zip writer ("unexpected pos")
        raise write_error(path, tmp, exc) from None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, tmp, exc) from None


def write_error(path: Path, tmp: Path, exc: BaseException) -> KnnmixError:
    """A file that could not be written in full (a full disk, a quota): its partial copy is removed, so the space
    it took is free again, and the file as it was stays in place (a run resumes from its last checkpoint)."""
    with contextlib.suppress(OSError):  # (a folder in the way of the partial copy: the error below names it)
        tmp.unlink(missing_ok=True)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
        f"the write stopped short, is the disk full? {one_line(exc, 120)}")
    return KnnmixError(f"cannot write {str(path)!r} ({reason}); the previous {path.name}, if any, is unchanged: "
                       f"{then_resume(exc)}")


def then_resume(exc: BaseException) -> str:
    """What to do about a failed write: free space (torch's short write too), mend the path (a folder in the way,
    no permission), or (another cause: a file-size limit, a failing disk) just what comes after."""
    code = exc.errno if isinstance(exc, OSError) else errno.ENOSPC
    if code in NO_SPACE:
        return "free some space, then --resume"
    if code in PATH_IN_THE_WAY:
        return "make the path writable, then --resume"
    return "once it can be written, --resume"


def safe_load(path: str | Path) -> Any:
    """A checkpoint or weights file read without running code (see :func:`~knnmix.errors.load_tensors`)."""
    return load_tensors(path, "checkpoint")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A knnmix checkpoint, checked for its layout (see :data:`CHECKPOINT_KEYS`)."""
    payload = safe_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{str(path)!r} is not a knnmix checkpoint of format {FORMAT} (found {found!r})")
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{str(path)!r} is an incomplete knnmix checkpoint (missing {', '.join(missing)})")
    return payload


def load_model(path: str | Path) -> nn.Module:
    """The network of a weights file (``model_best.pt``) or checkpoint, built from the arguments saved with it, in
    eval mode -- no dataset is read. It maps *normalised* images to ``(logits, features)``; see
    :func:`load_predictor` for pixels in [0, 1] to logits."""
    return _model(safe_load(path), path)


def load_predictor(path: str | Path) -> LogitsOnly:
    """The network of a weights file (``model_best.pt``, or a ``checkpoint.pt``) ready to predict: ``float32``
    images ``(N, C, H, W)`` with pixels in [0, 1], at the size it trained on, to logits ``(N, num_classes)``,
    normalised as training did; ``.classes`` names the logits' columns."""
    return predictor(safe_load(path), path)


def predictor(payload: Any, path: str | Path) -> LogitsOnly:
    """:func:`load_predictor` of a weights file's contents already read (``path`` names it in errors)."""
    from knnmix.models import LogitsOnly

    net, args = _model(payload, path), payload["model_args"]
    if "serving" not in payload:  # predicted without the input normalisation: every answer wrong, without a word
        older = ("a checkpoint written before 2026-12-04: load its run's model_best.pt" if "optimizer" in payload
                 else "a weights file written before 2026-12-02: train the run again, or normalise the images "
                      "yourself with load_model")
        raise CheckpointError(f"{str(path)!r} holds no serving entry (the input normalisation and class names), as "
                              f"{older}")
    serving = payload["serving"] or {}
    return LogitsOnly(net, serving.get("mean"), serving.get("std"), classes=serving.get("classes"),
                      input_shape=(args["in_channels"], args["image_size"], args["image_size"])).eval()


def _model(payload: Any, path: str | Path) -> nn.Module:
    from knnmix.models import build_model

    if not isinstance(payload, dict) or not isinstance(payload.get("model_args"), dict):
        raise CheckpointError(f"{str(path)!r} holds no model_args: not a knnmix weights file of format {FORMAT}")
    args, weights = payload["model_args"], payload.get("state_dict", payload.get("model"))
    try:
        with torch.device("meta"):  # the shapes first, allocating nothing: model_args may ask for any size
            shapes = {k: v.shape for k, v in build_model(**args).state_dict().items()}
        if not isinstance(weights, dict) or {k: getattr(v, "shape", None) for k, v in weights.items()} != shapes:
            raise CheckpointError(f"{str(path)!r}: its weights do not fit the network its model_args describe")
        model = build_model(**args)
        model.load_state_dict(weights)
    except CheckpointError:
        raise
    except KnnmixError as exc:  # build_model's own checks: an unknown network, a size it cannot take
        raise CheckpointError(f"{str(path)!r}: {exc}") from None
    except (TypeError, RuntimeError) as exc:  # e.g. an argument the network does not take
        raise CheckpointError(f"{str(path)!r}: model_args {args} build no network: {one_line(exc, 200)}") from None
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Random number generators as plain data


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain data (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------------
# Locks


@contextmanager
def folder_lock(path: str | Path, what: str = "run folder") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) while a run or sweep writes into it.

    A second process asking for the same folder gets a one-line :class:`KnnmixError` naming the holder. The lock is
    an ``flock`` on ``<path>/.lock``: the kernel releases it when the holder exits, even by SIGKILL. A folder this
    call created (with the folders it made above it) is removed again when the body fails before writing anything
    into it (e.g. nothing to resume).
    """
    p = Path(os.path.abspath(path))  # (no '..' left: the folders above are removed by name)
    created = next((q for q in [*reversed(p.parents), p] if not q.exists()), None)  # the topmost folder made here
    try:
        p.mkdir(parents=True, exist_ok=True)
        fh = open(p / LOCK, "a+")
    except OSError as exc:
        reason = "it is a file, not a folder" if p.is_file() else exc.strerror or one_line(exc, 200)
        raise KnnmixError(f"cannot write {what} {str(p)!r}: {reason}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise KnnmixError(f"{what} {str(p)!r} is in use by {holder}; wait for it to end or choose another "
                              "folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        try:
            yield
        except BaseException:
            if created and [f.name for f in p.iterdir()] == [LOCK]:  # and the folders above it this call made
                (p / LOCK).unlink()
                q = p
                with contextlib.suppress(OSError):  # (one another process filled meanwhile stays)
                    while True:
                        q.rmdir()
                        if q == created:
                            break
                        q = q.parent
            raise
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
