#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with knnmix and its test tools installed.
# Re-running it does nothing unless pyproject.toml changed. Usage: scripts/setup.sh [--with-data]
#   --with-data  also install Debian's Fashion-MNIST (apt-get install -y dataset-fashion-mnist), used by the tests
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.knnmix-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    echo "$want" > "$stamp"
fi

if [ "${1:-}" = "--with-data" ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get install -y dataset-fashion-mnist >/dev/null || {
        $SUDO apt-get update >/dev/null && $SUDO apt-get install -y dataset-fashion-mnist >/dev/null
    }
fi
