"""``scripts/gpu-check.sh``, the 5-minute GPU check, exercised where there is no GPU.

* its dry run (``--dry-run``): the same steps on the CPU with tiny sizes, the Ray Train step recorded as skipped
  (``--skip-ray``) to keep the test short; every step is in the JSON with a status and a time, the training steps
  trained PreAct ResNet-18 with neighbour mixing on the CIFAR-format data set it wrote, which knnmix's cifar10
  loader reads;
* its GPU mode on a machine without CUDA: it fails at once, naming the missing device, and still reports every step
  with the commands it would run (device=cuda, a 1-GPU Ray Train run);
* bad usage: one line, exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from knnmix import config as C
from knnmix.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check.sh"
STEPS = ["env", "data", "train_single", "torch_search", "mixed_precision", "ray_train"]
STATUSES = {"ok", "failed", "timed out", "skipped", "not offered"}
TRAINING = ["train_single", "torch_search"]


def run_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The script with this interpreter (KNNMIX_PYTHON) and without a Ray cluster address or a dry-run default."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GPU_CHECK_DRY_RUN")}
    env["KNNMIX_PYTHON"] = sys.executable
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def assert_every_step_reported(report: dict) -> None:
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert step["status"] in STATUSES, (name, step)
        assert isinstance(step["seconds"], int | float) and step["seconds"] >= 0, (name, step)
    assert isinstance(report["total_s"], int | float) and report["total_s"] >= 0


def offers_mixed_precision() -> bool:
    """The script's rule: a config key named like a mixed-precision switch."""
    rule = re.compile(r"(^|[._])(amp|autocast|mixed_precision|precision|half|fp16|bf16)$")  # AMP_KEY there
    return any(rule.search(k) for k, *_ in C.field_docs())


def test_dry_run_runs_every_step_on_the_cpu_and_reports_status_and_time(tmp_path):
    out, work = tmp_path / "report.json", tmp_path / "work"
    proc = run_check(str(out), "--dry-run", "--skip-ray", "--work-dir", str(work))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert (report["mode"], report["ok"]) == ("dry-run", True)
    assert_every_step_reported(report)
    steps = report["steps"]
    assert {n: s["status"] for n, s in steps.items()} == {
        "env": "ok", "data": "ok", "train_single": "ok", "torch_search": "ok",
        "mixed_precision": "ok" if offers_mixed_precision() else "not offered", "ray_train": "skipped",
    }
    assert report["versions"]["torch"] == torch.__version__ and "cuda" in report["versions"]
    # The training steps: PreAct ResNet-18 on the CPU, neighbour mixing in their epochs, throughput measured; the
    # torch step searched neighbours with torch, the other with faiss.
    for name in TRAINING:
        s = steps[name]
        assert "knn" in s["phases"] and s["device"] == "cpu" and s["world_size"] == 1, (name, s)
        assert "model.name=preact_resnet18" in s["command"] and "--dataset cifar10" in s["command"]
        assert s["epoch_time_s"] > 0 and s["images_per_s"] > 0 and s["seconds"] > 0
    assert (steps["train_single"]["search"], steps["torch_search"]["search"]) == ("faiss", "torch")
    # The Ray Train step, skipped here, still names its command: one CPU worker in the dry run.
    ray = steps["ray_train"]
    assert "--workers 1" in ray["command"] and "distributed.use_gpu=false" in ray["command"]
    # The data set it wrote is CIFAR-10 as knnmix's loader reads it: 5 training batches and a test batch of random
    # 32x32 colour images.
    assert steps["data"]["train_images"] == 40 and steps["data"]["test_images"] == 10
    bundle = load_dataset("cifar10", root=str(work / "data"))
    assert (len(bundle.train), len(bundle.test), bundle.train.shape) == (40, 10, (3, 32, 32))
    assert bundle.train.images.dtype == torch.uint8 and int(bundle.train.images.max()) > 200


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the real check would run (minutes)")
def test_without_a_gpu_the_check_fails_at_once_and_reports_every_step(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = run_check(str(out), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("gpu-check: error: env failed: no CUDA device")
    report = json.loads(out.read_text())
    assert (report["mode"], report["ok"]) == ("gpu", False)
    assert_every_step_reported(report)
    steps = report["steps"]
    assert steps["env"]["status"] == "failed"
    for name in ("data", *TRAINING, "ray_train"):
        assert steps[name]["status"] == "skipped", (name, steps[name])
    for name in (*TRAINING, "ray_train"):
        assert "device=cuda" in steps[name]["command"] and "--epochs 4" in steps[name]["command"]
    assert "method.search=torch" in steps["torch_search"]["command"]
    assert "--workers 1" in steps["ray_train"]["command"]
    assert "distributed.use_gpu=true" in steps["ray_train"]["command"]


def test_bad_usage_is_one_line():
    proc = run_check("--no-such-flag", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["gpu-check: error: unrecognized arguments: --no-such-flag"]
