#!/usr/bin/env python
"""Ray job entrypoint: ``knnmix sweep`` (Ray Tune + Optuna + ASHA over Ray Train trials), its flags but --register
and --verbose.

Runs unchanged on a laptop and on a cluster:

* laptop:  ``python distributed/sweep_job.py search_spaces/smoke.yaml --out runs/sweeps/smoke`` starts a private
  local Ray (``ray.init()``) for the sweep, beside any other Ray on the machine (``RAY_ADDRESS=auto`` joins a
  ``ray start`` cluster on it instead);
* cluster: ``ray job submit --address http://HEAD:8265 --working-dir . -- python distributed/sweep_job.py
  search_spaces/cifar10.yaml --out /mnt/shared/sweeps/cifar10 ...`` (``ray job submit`` sets ``RAY_ADDRESS`` for
  this driver, which joins that cluster).

The knnmix sources next to this file (``../src``) win over an installed knnmix, so a job runs the code it was
submitted with; they travel to every trial and worker in the job's runtime environment. A submitted job's working
directory is a temporary copy, so ``--out`` must be absolute there, and the MLflow store defaults to ``mlflow.db``
and ``mlartifacts/`` in the folder that contains ``--out`` (not the working directory); ``--tracking-uri`` (or
``MLFLOW_TRACKING_URI``, e.g. in the job's ``env_vars``) points elsewhere. Extra flag: ``--resume-if-exists``
continues the sweep when ``--out`` already holds one and starts it otherwise (for job retries). Exit status: 0
done, 2 a user error (one line on stderr), 1 otherwise (also when a trial failed). See distributed/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if (SRC / "knnmix").is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from knnmix.cli import exit_with, guarded  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sweep_job.py", allow_abbrev=False,
        description="knnmix sweep as a Ray job (the flags of `knnmix sweep`; --out is required).",
    )
    p.add_argument("space", nargs="?", help="search space YAML file (relative to the working dir), or a name in "
                   "search_spaces/; optional with --resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config key of the base run, or sweep.FIELD of the space (repeatable)")
    p.add_argument("--out", required=True, help="sweep folder (absolute for a submitted job)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite mlflow.db next to --out)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.add_argument("--resume-if-exists", action="store_true",
                   help="continue the sweep if --out already holds one, otherwise start it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: sweep(args), interrupted=" (continue with --resume)")


def resume_command() -> str:
    """What continues an interrupted sweep, with ``--resume --out DIR`` (the sweep's hint when it stops): a submitted
    job is submitted again with its environment variables, and its working dir or naming this script (a RayJob's,
    in the image)."""
    submitted = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by `ray job submit` for the job's driver
    if not submitted:
        return "python distributed/sweep_job.py"
    job = json.loads(submitted).get("runtime_env") or {}
    env = f" --runtime-env-json {shlex.quote(json.dumps({'env_vars': job['env_vars']}))}" if job.get("env_vars") else ""
    if job.get("working_dir"):
        return f"ray job submit --working-dir .{env} -- python distributed/sweep_job.py"
    return f"ray job submit{env} -- python {Path(__file__).resolve()}"


def sweep(args: argparse.Namespace) -> int:
    from knnmix import sweep_folder as SF
    from knnmix.scale import ray_env
    from knnmix.scale import sweep as S
    from knnmix.tracking import Store

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")  # as `knnmix sweep` (--resume refuses a change)
    out = SF.sweep_root(args.out)  # (an empty --out or a URI first: neither is a folder)
    ray_env.refuse_temporary_paths(args.out, uri)
    folder = SF.SweepFolder(out)
    resume = args.resume or (args.resume_if_exists and folder.file(SF.STATE_FILE).exists())
    space = SF.resolve_space(folder, args.space, args.overrides, resume=resume)
    if uri:
        store = Store.from_uri(uri)
    else:  # a resumed sweep keeps the store it started with (sweep_state.json)
        store = None if resume else Store.default(out.parent)
    summary = S.run_sweep(space, out, store=store, resume=resume, command=resume_command())
    print(json.dumps({
        "out": summary["folder"],
        "best": {s["noise"]: s["best"] and {k: s["best"][k] for k in ("params", "val_acc", "test_acc")}
                 for s in summary["settings"]},
        "trials": summary["trials"], "stopped_early": summary["stopped_early"], "failed": summary["failed"],
        "mlflow_ui": summary["mlflow"]["ui"],
    }))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    exit_with(main())
