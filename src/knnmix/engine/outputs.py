"""The run folder: what every run leaves behind, written by rank 0 only.

``config.yaml`` (resolved config), ``run.json`` (commit, machine, command), ``noisy_labels.npz`` (the labels the
run trained on, so any run can be re-scored), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (resumes
the method exactly), ``model_best.pt`` (weights with the best noisy-validation accuracy), ``summary.json``
(final and best-by-validation figures), ``label_issues.csv`` (the ranked list for annotators) and
``label_issues.png`` (the top suspects with their given and suggested labels).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from knnmix import config as C
from knnmix.provenance import git_commit, machine

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
LABEL_ISSUES = "label_issues.csv"
LABEL_ISSUES_PLOT = "label_issues.png"
NOISY_LABELS = "noisy_labels.npz"
CONFIG = "config.yaml"
BEST_MODEL = "model_best.pt"
RUN_INFO = "run.json"
RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, LABEL_ISSUES, LABEL_ISSUES_PLOT, NOISY_LABELS, CONFIG, BEST_MODEL, RUN_INFO)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def has_run(self) -> bool:
        return self.file(CHECKPOINT).exists()

    def clear(self) -> None:
        """Delete a previous run's files (only the files a run writes; anything else in the folder stays)."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)

    def start(self, cfg: C.Config, noisy_labels: dict[str, np.ndarray]) -> None:
        """Write the run's fixed files; ``metrics.jsonl`` starts empty (a restart before the first checkpoint
        must not keep the failed attempt's lines)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(METRICS).unlink(missing_ok=True)
        self.file(CONFIG).write_text(C.to_yaml(cfg))
        np.savez_compressed(self.file(NOISY_LABELS), **noisy_labels)
        info = {
            "commit": git_commit(),
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
        }
        self.file(RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from the full history (so a resumed run never holds an epoch twice)."""
        _atomic_write_text(self.file(METRICS), "".join(json.dumps(r) + "\n" for r in history))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.file(METRICS), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        _atomic_save(payload, self.file(CHECKPOINT))

    def load_checkpoint(self) -> dict[str, Any]:
        return torch.load(self.file(CHECKPOINT), map_location="cpu", weights_only=False)

    def save_best_model(self, state_dict: dict[str, Any]) -> None:
        _atomic_save(state_dict, self.file(BEST_MODEL))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write_text(self.file(SUMMARY), json.dumps(summary, indent=2) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
