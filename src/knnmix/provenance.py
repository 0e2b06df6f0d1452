"""Where a result came from: git commit, package versions, machine."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from contextlib import suppress
from functools import lru_cache
from pathlib import Path
from typing import Any


#: The file a build that has no ``.git`` (distributed/Dockerfile) writes its commit into, beside this module: it goes
#: wherever these files go (pip's install, Ray's copies), and no other copy of the code has it.
COMMIT_FILE = "COMMIT"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """``<sha>`` of the git checkout that tracks this package's files (``<sha>-dirty`` with uncommitted changes); else
    ``KNNMIX_GIT_COMMIT`` (what the driver passes to Ray workers, which import a copy of the package, or what a job's
    submitter sets); else the :data:`COMMIT_FILE` a Docker image's build wrote into the package; else ``unknown``. A
    package copied into another project's repository is not its checkout; code that ``ray job submit --working-dir``
    uploads into an image is not the image's."""
    try:
        _git("ls-files", "--error-unmatch", Path(__file__).name, check=True)
        sha = _git("rev-parse", "HEAD", check=True)
        dirty = _git("status", "--porcelain", "--untracked-files=no", check=False)
    except (OSError, subprocess.SubprocessError):
        built = package_dir() / COMMIT_FILE
        return os.environ.get("KNNMIX_GIT_COMMIT") or (built.read_text().strip() if built.is_file() else "unknown")
    return f"{sha}-dirty" if dirty else sha


#: How results record a time (:func:`now`); :func:`knnmix.tracking.epoch_ends` reads it back.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def now() -> str:
    """The local time as results record it, e.g. ``2026-12-02T01:23:45+0000``."""
    return time.strftime(TIME_FORMAT)


def command() -> str:
    """The command that started this result, as a shell line that runs it again (arguments quoted): the driver's
    (``KNNMIX_COMMAND``, passed to Ray workers) or this process's."""
    return os.environ.get("KNNMIX_COMMAND") or shlex.join(sys.argv)


def _git(*args: str, check: bool) -> str:
    done = subprocess.run(["git", *args], cwd=package_dir(), capture_output=True, text=True, timeout=5, check=check)
    return done.stdout.strip()


def package_dir() -> Path:
    """The folder of the ``knnmix`` package this process imported (Ray ships it to workers; MLflow logs it with a
    model)."""
    return Path(__file__).resolve().parent


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    return {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
