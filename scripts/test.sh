#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: unit tests, config wiring, and end-to-end runs on real data
# with real Ray and MLflow. Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
# Two pytest processes share the test files (pytest-xdist, a file at a time): most of the end-to-end tests' time
# is Ray and subprocess start-up, which overlaps well. KNNMIX_TEST_WORKERS=0 runs the suite in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-data
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/knnmix-ray-tests}
exec .venv/bin/python -m pytest -n "${KNNMIX_TEST_WORKERS:-2}" --dist loadfile "$@"
