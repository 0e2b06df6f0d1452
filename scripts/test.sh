#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit tests, config wiring, and end-to-end runs on real data
# with real Ray and MLflow. Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
# Two pytest processes share the test files (pytest-xdist, a file at a time, in the order tests/conftest.py puts
# them: the longest first, so that neither process ends the suite alone on one of them; xdist's own reordering by
# test count is off). KNNMIX_TEST_WORKERS=0 runs the suite in one process. Three processes are no faster: the
# suite keeps 2 cores busy (most of its time is Ray Train's and Ray's start-up, which is CPU work).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-data
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/knnmix-ray-tests}
# Two pytest processes (plus Ray's) share 2 cores, so OpenMP threads outnumber cores. OpenMP's default wait policy
# spins a thread between parallel regions: oversubscribed, the spinning threads starve the working ones and two
# tests side by side took 3x as long as one after the other (audit + smoke tier: 60 s against 20 s, 2026-12-01).
# Passive waiting yields the core instead; it costs a single process about a fifth, which the overlap wins back.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest -n "${KNNMIX_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
