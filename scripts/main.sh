#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: a Ray Tune + Optuna sweep of knnmix on
# scikit-learn's digits at two symmetric noise rates (20%, 50%), 3 trials each, every trial a 2-worker Ray Train run,
# logged to MLflow (./mlflow.db, ./mlartifacts). Prints the best config per noise rate and the `mlflow ui` command.
# Each run writes a new sweep folder under runs/sweeps/; extra arguments go to `knnmix sweep`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/knnmix-ray}
exec .venv/bin/knnmix sweep search_spaces/smoke.yaml --out "runs/sweeps/smoke-$(date +%Y%m%d-%H%M%S)" "$@"
