"""Starting or joining Ray, quietly, and the runtime environment that carries knnmix to the workers."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from knnmix.errors import KnnmixError, one_line
from knnmix.provenance import command, git_commit, package_dir

#: Environment of the Ray workers, unless the user set the variables. Ray Train's controller polls its workers
#: every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default) and a report can wait up to one interval: with one
#: report per epoch on small data the default made a 2-worker run several times slower than the work itself.
WORKER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # off in the private local Ray (see ensure_ray)
#: Driver environment variables with this prefix go to the workers too (e.g. ``KNNMIX_GIT_COMMIT``, test hooks).
FORWARDED_PREFIX = "KNNMIX_"
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray's variable handing a submitted job's config to its driver
QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "faiss", "faiss.loader", "mlflow", "mlflow.store.db.utils",
                 "alembic", "optuna")


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)})
    # workers import the copy of the package that py_modules ships, outside any checkout, and run Ray's command line:
    # they record the driver's commit and command
    env.update(KNNMIX_GIT_COMMIT=git_commit(), KNNMIX_COMMAND=command())
    return env


def runtime_env() -> dict[str, Any]:
    """The job-level runtime environment: the knnmix package (so that workers on nodes where knnmix is not
    installed can import it) and the workers' environment variables."""
    raw = os.environ.get(_JOB_CONFIG_ENV)  # a submitted job: Ray refuses a driver env that repeats the job's fields
    job_env = (json.loads(raw).get("runtime_env") or {}) if raw else {}
    env_vars = {k: v for k, v in worker_env().items() if k not in (job_env.get("env_vars") or {})}
    env = {"py_modules": [str(package_dir())], "env_vars": env_vars}
    return {k: v for k, v in env.items() if k == "env_vars" or k not in job_env}


def refuse_temporary_paths(out: str | None, tracking_uri: str | None) -> None:
    """In a submitted job, whose working directory is a temporary copy that Ray deletes, a relative ``--out`` or
    SQLite store would be lost with it: a one-line error (outside a job, nothing)."""
    if not os.environ.get(_JOB_CONFIG_ENV):
        return
    db = tracking_uri[len("sqlite:///"):] if tracking_uri and tracking_uri.startswith("sqlite:///") else None
    for flag, path in (("--out", out), ("--tracking-uri (or MLFLOW_TRACKING_URI)", db)):
        if path is not None and not Path(path).expanduser().is_absolute():
            raise KnnmixError(f"{flag} {path!r} must be absolute in a submitted job (its working directory is a "
                              "temporary copy that Ray deletes)")


def quiet(verbose: bool = False) -> None:
    """Ray's, Tune's, faiss's, MLflow's and Optuna's INFO logging off (``verbose`` brings it back)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # "Token authentication is enabled" at every start: true, and what we want; Tune's lines on Ctrl+C ("Resume
    # experiment with: Tuner.restore(...)": knnmix names `knnmix sweep --resume`), "Failed to fetch metrics" of trials
    # stopped before a result, and a failed trial's traceback (knnmix's trial line says why): with --verbose only
    for name in ("ray._private.authentication.authentication_token_setup", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    for name in ("ray.tune.tune", "ray.tune.execution.tune_controller"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter prints nothing at verbose=0
        os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")  # "operation X took 0.6 s": logging to MLflow does
        warnings.filterwarnings("ignore", module="ray")
        warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")


def refuse_unreachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) ``RAY_ADDRESS`` where nothing listens: one line now (Ray itself retries
    for minutes). Other forms (``auto``, a URL) are left to Ray, whose errors for them are prompt."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise KnnmixError(f"RAY_ADDRESS={address!r}: nothing answers there ({exc.strerror or one_line(exc)}); start "
                          "that cluster, or unset RAY_ADDRESS for a private local Ray") from None


def ensure_ray(*, verbose: bool = False, dashboard: bool = True, **init: Any) -> bool:
    """Join the cluster of ``RAY_ADDRESS`` (``ray job submit`` sets it for the job's driver; ``auto``: the ``ray
    start`` cluster on this machine), or start a private local Ray bound to 127.0.0.1, whatever other Ray instances
    run on the host. ``init``: more ``ray.init`` arguments, e.g. ``num_cpus``; ``log_to_driver=True`` shows the
    workers' output, which is off unless ``verbose``. ``dashboard=False`` starts a local Ray without the dashboard's
    modules (Ray Train needs them: its placement-group cleaner asks their state API whether the run's controller
    lives), about 1.7 CPU-seconds fewer at start and stop together and less polling (benchmarks/idle_ray.py); a
    joined cluster keeps what it has.

    A local Ray gets a GCS port chosen here, and every process of the job (Ray Train's controller and its
    placement-group cleaner included) gets ``RAY_ADDRESS`` pointing at it: Ray's own look-ups then find this Ray,
    not another instance on the host (with two, they fail and a stopped trial's placement group is never freed).
    Returns ``True`` when this call initialised Ray, ``False`` when this process was already connected.
    """
    import ray

    quiet(verbose)
    if ray.is_initialized():
        return False
    env = runtime_env()
    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING,
                              "runtime_env": env, **init}
    if address := os.environ.get("RAY_ADDRESS"):
        refuse_unreachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ValueError, ConnectionError) as exc:  # an HTTP (dashboard) address, no Ray at "auto", ...
            raise KnnmixError(f"RAY_ADDRESS={address!r}: {one_line(exc)}") from None
        sigterm_as_interrupt()
        return True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"  # for the job's processes only, not this one's children
    global _LOCAL_GCS_PORT
    _LOCAL_GCS_PORT = port
    # no cloud preempts this host: Ray Train's preemption watcher (an actor per run, started beside the workers on
    # the same cores, and a core_worker error line about its arguments at every start) has nothing to watch
    if PREEMPTION_WATCHER_ENV not in os.environ:
        env["env_vars"][PREEMPTION_WATCHER_ENV] = "0"
    # Ray turns a node address of 127.0.0.1 into the host's reachable address (its GCS and raylets then listen on
    # every interface) unless it believes it runs single-node, as on macOS; this flag says so, for this process
    # while it starts Ray (Ray read it at import) and, through the environment, for the GCS, raylet and workers it
    # starts. Once connected, Ray takes this process's address from its node, so a later join is not affected.
    from ray._private import ray_constants

    cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    local = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    os.environ.update(local)
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 **kwargs)
    except OSError as exc:  # before Ray starts any process: the Unix sockets below its temp dir need short paths
        if "AF_UNIX path length" not in str(exc):
            raise
        where = os.environ.get("RAY_TMPDIR") or init.get("_temp_dir") or "the temporary folder"
        raise KnnmixError(f"RAY_TMPDIR={where!r} is too long for Ray: its socket paths below it may have at most 107 "
                          "bytes; choose a shorter RAY_TMPDIR (e.g. /tmp/ray-$USER)") from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster
        for key in local:
            os.environ.pop(key, None)
    sigterm_as_interrupt()
    return True


def sigterm_as_interrupt() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a batch system, ``ray job stop``) stop this process as Ctrl+C does: a sweep
    saves its state and says how to ``--resume``, a run says it was interrupted. ``ray.init`` leaves SIGTERM to
    Ray's crash handler, which printed a native stack dump and aborted the driver (status 134). Main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


#: The GCS port of the private local Ray this process started (None when it joined a cluster or started none).
_LOCAL_GCS_PORT: int | None = None
#: Set by the ``knnmix`` program (knnmix.cli.main): after SIGTERM, end the process once its private Ray is gone too
#: (:func:`_exit_once_ray_is_gone`). Off for library callers, which may stop their Ray and go on.
LEAVE_WITH_RAY = False
#: The line a driver ends with when SIGTERM stopped its private local Ray too.
RAY_GONE = "knnmix: interrupted (SIGTERM stopped Ray's processes too); the same command with --resume continues"
#: What :func:`_exit_once_ray_is_gone` runs first, each for at most :data:`BEFORE_EXIT_S` (a sweep marks its MLflow
#: runs KILLED there, as after Ctrl+C). Each must not raise.
BEFORE_EXIT: list[Callable[[], None]] = []
BEFORE_EXIT_S = 5.0
WATCHING = threading.Event()  # set once SIGTERM started that watch (knnmix.cli then leaves this Ray alone)


def _on_sigterm(_signum: int, frame: Any) -> None:
    if LEAVE_WITH_RAY and _LOCAL_GCS_PORT is not None and not WATCHING.is_set():
        WATCHING.set()
        threading.Thread(target=_exit_once_ray_is_gone, args=(_LOCAL_GCS_PORT,), daemon=True).start()
    handler = signal.getsignal(signal.SIGINT)  # Tune's graceful stop during a sweep, else Python's KeyboardInterrupt
    if not callable(handler):  # SIGINT ignored (a job started with '&' by a script) or left to the OS: still stop
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


def _exit_once_ray_is_gone(port: int, poll_s: float = 0.5) -> None:
    """After SIGTERM: end this process with :data:`RAY_GONE` and status 130 once its private Ray's GCS no longer
    answers on ``port``. A SIGTERM to the whole process group (``timeout``, ``kill -- -PGID``; systemd and Slurm
    signal every process of the job) stops Ray's own processes with the driver: Tune then waits for them, and Ray's
    client ended the driver after 60 s with status 1 and a GCS error (after Slurm's default 30 s, SIGKILL). What
    ``--resume`` needs is on disk already (Tune saves its state every few seconds; a run, every checkpoint), as after
    a SIGKILL. Never fires once the main thread has finished (Ray's own shutdown at exit stops the GCS too)."""
    while threading.main_thread().is_alive():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=poll_s).close()
        except OSError:
            if threading.main_thread().is_alive():
                for before in list(BEFORE_EXIT):
                    worker = threading.Thread(target=before, daemon=True)  # a store that hangs cannot hold the exit
                    worker.start()
                    worker.join(BEFORE_EXIT_S)
                os.write(2, (RAY_GONE + "\n").encode())
                os._exit(130)
            return
        time.sleep(poll_s)
