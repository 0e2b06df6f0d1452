"""What several test files share: a small search space on digits written as a space file (the sweep tests), MLflow
look-ups, a free port, the processes under this one and their listening addresses, process clean-up."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import yaml

from knnmix import tracking as TR

VENV_BIN = Path(sys.executable).parent

#: Trial settings of the sweeps below: 5 short epochs on digits, each trial in its Tune trial's process.
BASE_SET = {"epochs": 5, "distributed.workers": 0, "method.warmup_epochs": 1, "log_every": 5}
PARAMS = {
    "method.k": {"type": "int", "low": 1, "high": 3},
    "method.temperature": {"type": "loguniform", "low": 0.5, "high": 2.0},
    "method.correction_start": {"type": "int", "low": 3, "high": 4},
    "method.correction_momentum": {"type": "uniform", "low": 0.8, "high": 0.95},
    "method.correction_period": {"type": "choice", "values": [1, 2]},
    "optim.lr": {"type": "loguniform", "low": 1.0e-5, "high": 0.1},
}
GOOD = {"method.k": 2, "method.temperature": 1.0, "method.correction_start": 3, "method.correction_momentum": 0.9,
        "method.correction_period": 1, "optim.lr": 0.05}
#: lr 1e-5 cannot learn anything in 2 epochs: ASHA (grace period 2) stops this start point behind GOOD.
BAD = {**GOOD, "method.k": 1, "optim.lr": 1.0e-5}


def space_data(**fields) -> dict:
    data = {
        "name": "e2e",
        "base": {"config": "digits", "set": dict(BASE_SET)},
        "noise": ["symmetric:0.2", "symmetric:0.5"],
        "trials": 3,
        "seed": 0,
        "asha": {"grace_period": 2, "reduction_factor": 2},
        "start_with": [GOOD, BAD],
        "params": PARAMS,
    }
    data.update(fields)
    return data


def write_space(folder: Path, name: str = "space.yaml", **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(space_data(**fields), sort_keys=False))
    return path


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_by_kind(uri: str, experiment: str) -> dict[str, list]:
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out: dict[str, list] = {"sweep": [], "noise_setting": [], "trial": []}
    for r in runs:
        out[r.data.tags[TR.KIND_TAG]].append(r)
    return out


def kill_tree(pid: int, grace_s: float = 0) -> None:
    """Stop process ``pid`` and every process under it: with ``grace_s``, SIGTERM first and SIGKILL for those still
    alive after it; without, SIGKILL at once (a lost head node, on purpose)."""
    import psutil  # Ray's vendored copy (ray/thirdparty_files), on sys.path once ray is imported

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    if grace_s:
        for p in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        tree = psutil.wait_procs(tree, timeout=grace_s)[1]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=15)


def descendants(pid: int | None = None) -> list[str]:
    """The command lines of the processes under ``pid`` (default: this one), e.g. the local Ray it started:
    ``ray-dashboard-StateHead-0 ...`` for the dashboard's modules."""
    import psutil  # Ray's vendored copy (ray/thirdparty_files), on sys.path once ray is imported

    lines = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):  # (one that just ended)
            lines.append(" ".join(child.cmdline()))
    return lines


def listening_addresses() -> set[tuple[str, int]]:
    """The TCP addresses this process and the processes under it (its local Ray's GCS, raylet, workers, ...) listen
    on: ``(ip, port)``."""
    import psutil  # Ray's vendored copy (ray/thirdparty_files), on sys.path once ray is imported

    ours = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    return {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in ours}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
