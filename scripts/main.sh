#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default: knnmix vs plain cross-entropy on
# scikit-learn's digits with 40% symmetric label noise, same network, epochs and seed; prints both test accuracies.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/knnmix compare --config digits --methods ce,knnmix --out runs/main --overwrite "$@"
