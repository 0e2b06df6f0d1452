"""Starting or joining Ray, and the runtime environment that carries knnmix to the workers.

:func:`ensure_ray` is the only place that calls ``ray.init``. With ``RAY_ADDRESS`` set (``ray job submit`` sets it
for the job's driver) it joins that cluster; with a cluster started by ``ray start`` on this machine it joins that
one; otherwise it starts a private local Ray for this process. Either way the job's runtime environment ships the
knnmix package folder (``py_modules``), so workers on nodes where knnmix is not installed can import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Set for the Ray Train controller (and propagated to the workers) unless the user set them. Ray Train's controller
#: polls the workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s by default) and a ``ray.train.report`` can wait
#: up to one interval; with one report per epoch on small data sets the default made a 2-worker run several times
#: slower than the work itself.
DRIVER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}

#: Driver environment variables with this prefix are forwarded to the training workers (test hooks, e.g.
#: ``KNNMIX_TEST_FAIL_AT``, and ``KNNMIX_GIT_COMMIT``).
FORWARDED_PREFIX = "KNNMIX_"

# Ray's own name for the variable through which the job manager hands a submitted job's config to its driver.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def package_dir() -> Path:
    """The folder of the ``knnmix`` package this process imported (shipped to workers as a ``py_module``)."""
    import knnmix

    return Path(knnmix.__file__).resolve().parent


def runtime_env() -> dict[str, Any]:
    """The job-level runtime environment: the knnmix package and the controller settings."""
    return {"py_modules": [str(package_dir())], "env_vars": dict(DRIVER_ENV)}


def forwarded_env() -> dict[str, str]:
    """``KNNMIX_*`` variables of this process, for the workers' environment."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}


def _without_job_fields(env: dict[str, Any]) -> dict[str, Any]:
    """Drop the fields a submitted job already sets: Ray refuses to merge a driver's runtime_env that repeats them."""
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return env
    try:
        job_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return env
    out = {k: v for k, v in env.items() if k == "env_vars" or k not in job_env}
    taken = set(job_env.get("env_vars") or {})
    out["env_vars"] = {k: v for k, v in env.get("env_vars", {}).items() if k not in taken}
    return out


def ensure_ray() -> bool:
    """Join the Ray cluster (``RAY_ADDRESS``, or one ``ray start`` left on this machine) or start a local one.

    Returns ``True`` when this call initialised Ray, ``False`` when this process was already connected (then the
    existing connection and its runtime environment are used as they are).
    """
    import ray

    if ray.is_initialized():
        return False
    ray.init(runtime_env=_without_job_fields(runtime_env()), log_to_driver=True)
    return True


@contextmanager
def driver_env() -> Iterator[None]:
    """Set :data:`DRIVER_ENV` in this process (where not set by the user) while a trainer runs, then restore it.

    Ray Train copies these variables from the driver's environment to its controller and workers.
    """
    added = [k for k in DRIVER_ENV if k not in os.environ]
    for k in added:
        os.environ[k] = DRIVER_ENV[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
