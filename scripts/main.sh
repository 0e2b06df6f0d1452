#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: a Ray Tune + Optuna sweep of knnmix on
# scikit-learn's digits at two symmetric noise rates (20%, 50%) side by side, 3 trials each, every trial in its Tune
# trial's own process, logged to MLflow (./mlflow.db, ./mlartifacts; or MLFLOW_TRACKING_URI). About a minute on two
# cores. Prints the best config per noise rate and the `mlflow ui` and `optuna-dashboard` commands.
# Each run writes a new sweep folder under runs/sweeps/; extra arguments go to `knnmix sweep`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/knnmix-ray}
exec .venv/bin/knnmix sweep search_spaces/smoke.yaml --out "runs/sweeps/smoke-$(date +%Y%m%d-%H%M%S)" "$@"
