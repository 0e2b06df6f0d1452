"""Fixtures shared by the test files that start a real Ray runtime (``test_ray_train.py``, ``test_ray_commands.py``,
``test_sweep.py``, ``test_sweep_trials.py``, ``test_sweep_recovery.py``), and the order of the test files.

Ray runs with its own temp dir (``RAY_TMPDIR``) and a token from ``RAY_AUTH_TOKEN`` (so nothing is written to
``~/.ray``). One local Ray (2 CPUs) serves the tests that need one; tests that run Ray elsewhere (a ``ray start``
head node, a sweep driver in a subprocess) shut it down first, and the next test that needs it starts it again;
it is shut down after each test file too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from knnmix.scale import ray_env
from support import descendants, free_port

# Under pytest-xdist (scripts/test.sh) each test process gets its own Ray temp dir, so that a Ray a test starts
# outside the fixtures below (a sweep driver, a benchmark, `ray job submit`) never joins the other process's Ray.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["RAY_TMPDIR"] = f"{os.environ.get('RAY_TMPDIR', '/tmp/ray')}-{os.environ['PYTEST_XDIST_WORKER']}"


#: The test files whose end-to-end tests take longest, longest first (about 2-4 minutes each on 2 cores). pytest-xdist
#: (scripts/test.sh, --dist loadfile --no-loadscope-reorder) hands whole files to its processes in collection order,
#: so these start first and the short files fill in around them; last, one of them would end the suite alone.
SLOW_FILES = ("test_ray_train.py", "test_sweep_trials.py", "test_ray_commands.py", "test_sweep_recovery.py",
              "test_sweep.py", "test_benchmark_smoke.py", "test_engine.py", "test_gpu_check.py")


_gone = [name for name in SLOW_FILES if not (Path(__file__).parent / name).exists()]
assert not _gone, f"SLOW_FILES names test files that are gone (renamed?): {_gone}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: each file keeps its order


@pytest.fixture
def interrupt_after_checkpoint():
    """``f(argv, run, sig, env=None, wait_s=60)``: run ``python -m knnmix.cli *argv``, send it ``sig`` once
    ``run/checkpoint.pt`` exists (or after ``wait_s``) and return its exit status and stderr."""
    return _interrupt_after_checkpoint


def _interrupt_after_checkpoint(argv: list[str], run: Path, sig: int, *, env: dict[str, str] | None = None,
                                wait_s: float = 60) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "knnmix.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + wait_s
        while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.time() < end:
            time.sleep(0.1)
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    return proc.returncode, err


@pytest.fixture(scope="session")
def ray_session():
    """A private temp dir and token for Ray; yields ``start(dashboard=True)``, which (re)starts one local 2-CPU Ray
    if needed (through knnmix's own ``ensure_ray``: bound to 127.0.0.1, with the dashboard that Ray Train needs to
    free a stopped trial's placement group; ``dashboard=False``: without it, as ``knnmix sweep`` starts Ray for
    in-process trials, unless one is running)."""
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="kx-ray-", dir="/tmp"))  # short: Ray's socket paths live below it
    names = ("RAY_TMPDIR", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_ADDRESS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["RAY_TMPDIR"] = str(tmp)
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(24)  # ray.init() turns token auth on and uses this token
    os.environ.pop("RAY_ADDRESS", None)

    def start(dashboard: bool = True) -> None:
        if ray.is_initialized() and dashboard and not any(x.startswith("ray-dashboard-") for x in descendants()):
            ray.shutdown()  # Ray Train's tests need the dashboard this Ray (a sweep's, or ours) was started without
        if not ray.is_initialized():
            port = {"dashboard_port": free_port()} if dashboard else {}
            ray_env.ensure_ray(num_cpus=2, dashboard=dashboard, **port)

    yield {"start": start, "tmp": tmp}
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def no_idle_ray():
    """Stop the shared Ray after each test file that left it running: idle, a local Ray polls from a dozen processes
    (GCS, raylet, log monitor, dashboard, agent, idle workers), which slowed two 1-thread jobs beside it by 4-15%,
    dashboard or not (benchmarks/idle_ray.py; benchmarks/results/idle-ray-2026-12-03*.json). The next file that
    needs it pays one start (~8 s)."""
    yield
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture
def local_ray(ray_session):
    ray_session["start"]()
    return ray_session


@pytest.fixture
def sweep_ray(ray_session):
    """The local Ray of a sweep whose trials run in their Tune trial's process: no dashboard (a running one
    serves as it is)."""
    ray_session["start"](dashboard=False)
    return ray_session
