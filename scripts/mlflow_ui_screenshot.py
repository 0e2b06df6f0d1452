"""Open a sweep's experiment in the MLflow UI in headless Chromium and save a screenshot (docs/img/).

    .venv/bin/python scripts/mlflow_ui_screenshot.py --tracking-uri sqlite:///mlflow.db --experiment knnmix-sweep-smoke

Starts ``mlflow server`` on 127.0.0.1 for the store (job execution off), waits for it, asks Debian's Chromium
(``apt-get install -y chromium``) for the experiment's page, and writes the PNG. Checks that the page is the runs
table of a model-development experiment, not the GenAI overview.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--artifact-root", help="default: mlartifacts beside a sqlite store")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", default="docs/img/mlflow-sweep-runs.png")
    args = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: Chromium not found; apt-get install -y chromium", file=sys.stderr)
        return 2
    root = args.artifact_root
    if root is None and args.tracking_uri.startswith("sqlite:///"):
        root = str(Path(args.tracking_uri[len("sqlite:///"):]).parent / "mlartifacts")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", args.tracking_uri,
                               "--default-artifact-root", root, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                                    f"{args.experiment}", timeout=30) as r:
            exp = json.loads(r.read())["experiment"]
        kind = {t["key"]: t["value"] for t in exp.get("tags", [])}.get("mlflow.experimentKind")
        print(f"experiment {args.experiment} ({exp['experiment_id']}): mlflow.experimentKind = {kind}")
        url = f"{base}/#/experiments/{exp['experiment_id']}/runs"
        out = Path(args.out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000",
                   f"--screenshot={out}", url]
            subprocess.run(cmd, check=True, capture_output=True, timeout=180)
            dom = subprocess.run([*cmd[:-2], "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        runs_table = "Run Name" in dom or "run-name" in dom.lower()
        print(f"screenshot: {out}; runs table on the page: {runs_table}; GenAI overview: "
              f"{'Traces' in dom and not runs_table}")
        return 0 if runs_table else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
