"""Open a sweep's experiment in the MLflow UI in headless Chromium, check what a user sees, save a screenshot.

    .venv/bin/pip install playwright            # the Python driver only: it drives Debian's Chromium, downloads nothing
    .venv/bin/python scripts/mlflow_ui_screenshot.py --tracking-uri sqlite:///mlflow.db --experiment knnmix-sweep-smoke

Starts ``mlflow server`` on 127.0.0.1 for the store (job execution off), opens the experiment's link as the sweep
prints it (``.../#/experiments/<id>/runs?workflowType=machine_learning``) in ``/usr/bin/chromium`` (``apt-get install
-y chromium``), closes the assistant panel, expands the nested runs (sweep -> noise settings -> trials) and writes the
PNG. Exits 1 unless the page is the model-training runs table with every trial's Dataset, Source and (for the best
trials) Models cells filled.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PLUS_ICON = "M7.25 7.25V4.5"  # the path of the "expand" (+) icon of a parent run's row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--artifact-root", help="default: mlartifacts beside a sqlite store")
    p.add_argument("--experiment", required=True)
    p.add_argument("--out", default="docs/img/mlflow-sweep-runs.png")
    args = p.parse_args()
    root = args.artifact_root or str(Path(args.tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", args.tracking_uri,
         "--default-artifact-root", root, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                                    f"{args.experiment}", timeout=30) as r:
            exp_id = json.loads(r.read())["experiment"]["experiment_id"]
        url = f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_selector("text=Run Name", timeout=60_000)
            close = page.locator('button[aria-label="Close"]')
            if close.count():
                close.first.click()
            for _ in range(3):  # sweep -> noise settings -> trials
                buttons = page.locator('button[data-component-id*="runnamecellrenderer"]')
                closed = [b for b in buttons.all() if PLUS_ICON in (b.inner_html() or "")]
                for b in closed:
                    b.click()
                page.wait_for_timeout(1500)
            out = Path(args.out).absolute()
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            text = page.inner_text("body")
            browser.close()
        checks = {
            "model-training view (not the GenAI overview)": "Model registry" in text and "Usage" not in text,
            "runs table": "Run Name" in text and "Dataset" in text and "Source" in text,
            "trial rows, named by their sampled values": "temperature=" in text,
            "their datasets": "digits [symmetric:" in text,
        }
        for what, ok in checks.items():
            print(f"{'ok ' if ok else 'NO '} {what}")
        print(f"screenshot: {out}\nopened: {url}")
        return 0 if all(checks.values()) else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
