#!/usr/bin/env python
"""Ray job entrypoint: ``knnmix train`` on Ray Train workers, the same flags as ``knnmix train``.

Runs unchanged on a laptop and on a cluster:

* laptop:  ``python distributed/train_job.py --config digits --workers 2 --out runs/digits-ray`` starts a private
  local Ray (``ray.init()``) for the run, beside any other Ray on the machine (``RAY_ADDRESS=auto`` joins a
  ``ray start`` cluster on it instead);
* cluster: ``ray job submit --address http://HEAD:8265 --working-dir . -- python distributed/train_job.py ...``
  (``ray job submit`` sets ``RAY_ADDRESS`` for this driver, which joins that cluster).

The knnmix sources next to this file (``../src``) win over an installed knnmix, so a job runs the code it was
submitted with; they travel to every worker in the job's runtime environment. Extra flag: ``--resume-if-exists``
continues the run when its folder or Ray Train storage already holds one and starts it otherwise (for job retries,
e.g. a KubeRay RayJob's ``backoffLimit``). With ``--tracking-uri`` (or ``MLFLOW_TRACKING_URI``) the finished run is
logged to MLflow. Exit status: 0 done, 2 a user error (one line on stderr), 1 otherwise.
See distributed/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
if (SRC / "knnmix").is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from knnmix.cli import _add_run_options, cmd_train, exit_with, guarded, load_config, resume_config  # noqa: E402
from knnmix.errors import KnnmixError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_job.py", allow_abbrev=False,
        description="knnmix train on Ray Train (the flags of `knnmix train`; --workers N is required).",
    )
    _add_run_options(p, resume="the run (and its Ray Train checkpoints)")
    p.add_argument(
        "--resume-if-exists", action="store_true",
        help="continue the run if --out / the Ray Train storage already holds it, otherwise start it",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded(lambda: train(args))


def train(args: argparse.Namespace) -> int:
    from knnmix.scale import ray_env
    from knnmix.scale.train import run_exists

    if args.resume or args.resume_if_exists:
        resume_config(args)  # as `knnmix train --resume`: the run folder's config by default
    cfg = load_config(args)
    ray_env.refuse_temporary_paths(cfg.out, args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    if cfg.distributed.workers < 1:
        raise KnnmixError("train_job.py trains on Ray Train workers: pass --workers N (N >= 1)")
    args.resume = args.resume or (args.resume_if_exists and run_exists(cfg))
    return cmd_train(args)  # as `knnmix train`: Ray Train, then MLflow when a tracking URI is given


if __name__ == "__main__":
    exit_with(main())
