#!/usr/bin/env bash
# GPU check: knnmix's CUDA paths on one GPU in at most about 5 minutes; writes a JSON of what ran and how fast.
#
#   scripts/gpu-check.sh [OUT.json] [--dry-run] [--skip-ray] [--work-dir DIR] [--budget SECONDS]
#
# OUT.json defaults to gpu-check.json. The steps, each timed and recorded with its status (ok, failed, timed out,
# skipped, not offered) under "steps" in the JSON:
#   env              torch / CUDA / cuDNN versions, the GPU's name (fails when there is no CUDA device)
#   data             a CIFAR-10 data set in the python pickle batch layout knnmix's cifar10 loader reads
#                    (cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta) of random uint8 32x32x3
#                    images: nothing to download
#   train_single     `knnmix train` of PreAct ResNet-18 on it, device=cuda, knnmix mixing on (1 warm-up epoch, then
#                    neighbour mixing and soft-target correction every epoch), faiss neighbour search on the CPU
#   torch_search     the same with method.search=torch: the neighbour search on the GPU
#   mixed_precision  the same with the config's mixed-precision key, when `knnmix config --doc` lists one;
#                    "not offered" otherwise (nothing is added for the check)
#   ray_train        the same as a 1-GPU Ray Train run (--workers 1 --set distributed.use_gpu=true) on a private
#                    local Ray
# A training step passes when knnmix exits 0, writes summary.json and its epochs include neighbour mixing ("knn").
#
# --dry-run (or GPU_CHECK_DRY_RUN=1): the same steps on the CPU (device=cpu, distributed.use_gpu=false) with tiny
# sizes (40 images, 1 epoch that mixes from the start), to check the script itself anywhere.
# --skip-ray: record ray_train as skipped, with the command it would run (keeps the dry-run test short).
# --budget: seconds all steps may take together (default 285 on the GPU, 900 for a dry run); a step that would
# start or run past it is cut short and fails.
# The check runs this checkout's knnmix (src/ first on PYTHONPATH) with .venv/bin/python if there is one, else
# python3 (KNNMIX_PYTHON chooses another interpreter). Exit status: 0 no step failed, 1 a step failed, 2 bad usage.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${KNNMIX_PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
# The check itself, in Python (timing, subprocesses, JSON); it reads its source from this here-document.
exec "$PY" - "$REPO" "$@" <<'PYTHON'
import argparse
import json
import os
import pickle
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(sys.argv[1])
STEPS = ("env", "data", "train_single", "torch_search", "mixed_precision", "ray_train")
# Sizes of the GPU check (4 epochs of 20,000 CIFAR-shaped images, well inside 5 minutes on one GPU) and of the dry
# run (40 images, one epoch that mixes from the start, one CPU thread: quick even on a busy machine).
# threads 0 = torch's default.
_CPUS = os.cpu_count() or 1
SIZES = {
    "gpu": {"per_batch": 4000, "test": 2000, "epochs": 4, "warmup_epochs": 1, "correction_start": 2,
            "batch_size": 128, "loader_workers": min(4, _CPUS), "cpus_per_worker": min(4, _CPUS), "threads": 0},
    "dry-run": {"per_batch": 8, "test": 10, "epochs": 1, "warmup_epochs": 0, "correction_start": 1,
                "batch_size": 16, "loader_workers": 0, "cpus_per_worker": 1, "threads": 1},
}
# Config keys that would turn on mixed precision (matched against `knnmix config --doc`'s keys).
AMP_KEY = re.compile(r"(^|[._])(amp|autocast|mixed_precision|precision|half|fp16|bf16)$")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like knnmix's own errors
        print(f"gpu-check: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse(argv):
    p = Parser(prog="scripts/gpu-check.sh", description="Check knnmix's CUDA paths on one GPU; write a JSON report.")
    p.add_argument("out", nargs="?", default="gpu-check.json", help="the JSON report (default gpu-check.json)")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN", "") not in ("", "0"),
                   help="the same steps on the CPU with tiny sizes (also GPU_CHECK_DRY_RUN=1)")
    p.add_argument("--skip-ray", action="store_true", help="record the Ray Train step as skipped")
    p.add_argument("--work-dir", help="keep the data set, runs and logs here (default: a temporary folder, removed)")
    p.add_argument("--budget", type=float, help="seconds for all steps (default 285 on the GPU, 900 for a dry run)")
    return p.parse_args(argv)


class Check:
    """The report being written: one entry per step, in STEPS order, each with a status and its seconds."""

    def __init__(self, args, work):
        self.args, self.work = args, work
        self.mode = "dry-run" if args.dry_run else "gpu"
        self.size = SIZES[self.mode]
        self.budget = args.budget or (900.0 if args.dry_run else 285.0)
        self.start = time.monotonic()
        self.report = {
            "check": "scripts/gpu-check.sh", "repo": str(REPO), "mode": self.mode, "ok": False,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": self.budget,
            "total_s": None, "sizes": dict(self.size), "versions": {}, "steps": {},
        }
        self.steps = self.report["steps"]

    def left(self):
        return self.budget - (time.monotonic() - self.start)

    def record(self, name, status, seconds, **detail):
        self.steps[name] = {"status": status, "seconds": round(seconds, 3), **detail}
        extra = f" ({detail['images_per_s']:.0f} images/s)" if detail.get("images_per_s") else ""
        why = detail.get("error") or detail.get("reason")
        extra += f": {why}" if why and status != "ok" else ""
        print(f"gpu-check: {name:<16} {status} in {seconds:.1f} s{extra}", flush=True)

    def write(self):
        self.report["total_s"] = round(time.monotonic() - self.start, 3)
        self.report["ok"] = all(s["status"] not in ("failed", "timed out") for s in self.steps.values())
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.report, indent=2) + "\n")


def versions():
    """torch / CUDA / cuDNN / Ray / knnmix versions and the GPU (this process imports torch; it does not train)."""
    import torch

    from knnmix.provenance import git_commit  # what the runs record: <sha>[-dirty], KNNMIX_GIT_COMMIT, unknown

    v = {
        "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "gpu": None, "gpu_count": 0,
        "ray": _dist_version("ray"), "knnmix": _dist_version("knnmix"), "commit": git_commit(),
        "host": platform.node(), "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        v.update(gpu=props.name, gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                 gpu_memory_gib=round(props.total_memory / 2**30, 1))
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20)
            v["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    return v


def _dist_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def write_cifar10(root, per_batch, test, seed=0):
    """Random CIFAR-10 in the release's layout: each batch a pickled dict whose "data" is uint8 (N, 3072), per image
    the R, G and B planes of 32x32 row-major, with "labels" (ints in [0, 10)); batches.meta names the classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(name, n, label):
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        entry = {"batch_label": label, "labels": [int(x) for x in rng.integers(0, 10, n)],
                 "data": hwc.transpose(0, 3, 1, 2).reshape(n, 3 * 32 * 32),
                 "filenames": [f"{name}_{i:05d}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))

    for i in range(1, 6):
        batch(f"data_batch_{i}", per_batch, f"training batch {i} of 5")
    batch("test_batch", test, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": per_batch, "label_names": [f"class-{k}" for k in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"path": str(folder), "train_images": 5 * per_batch, "test_images": test,
            "bytes": sum(f.stat().st_size for f in folder.iterdir())}


def amp_setting():
    """``(key, "KEY=VALUE")`` that turns mixed precision on when the config offers a key for it (``(key, None)``
    when its values are not understood here), ``None`` when it offers none."""
    from knnmix import config as C

    for key, tp, _default, _doc in C.field_docs():
        if AMP_KEY.search(key):
            kinds = str(tp)
            if kinds == "bool":
                return key, f"{key}=true"
            for value in ("bf16", "bfloat16", "fp16", "16", "mixed"):
                if re.search(rf"(^|[ /'\"]){value}($|[ /'\"])", kinds):
                    return key, f"{key}={value}"
            return key, None
    return None


def train_command(check, name, data_root, extra):
    s, gpu = check.size, check.mode == "gpu"
    cmd = [sys.executable, "-m", "knnmix.cli", "train", "--dataset", "cifar10", "--noise", "symmetric:0.4",
           "--method", "knnmix", "--epochs", str(s["epochs"]), "--seed", "0", "--out", str(check.work / name),
           "--set", f"data.root={data_root}", "--set", "model.name=preact_resnet18",
           "--set", f"device={'cuda' if gpu else 'cpu'}",
           "--set", f"method.warmup_epochs={s['warmup_epochs']}",
           "--set", f"method.correction_start={s['correction_start']}",
           "--set", "method.correction_period=1", "--set", "method.bank_every=1",
           "--set", f"optim.batch_size={s['batch_size']}", "--set", f"data.num_workers={s['loader_workers']}"]
    if s["threads"]:
        cmd += ["--set", f"threads={s['threads']}"]
    return cmd + extra


def run_training(check, name, cmd, env=None):
    """Run one `knnmix train` within the time left; record status, time, throughput and the phases it trained."""
    out = check.work / name
    shutil.rmtree(out, ignore_errors=True)
    log = check.work / f"{name}.log"
    timeout = check.left()
    shown = shlex.join(["knnmix"] + cmd[3:])  # `python -m knnmix.cli` is the `knnmix` command
    if timeout < 5:
        check.record(name, "failed", 0.0, command=shown, error="no time left in the budget")
        return
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=check.work,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and whatever it started (DataLoader workers, Ray)
            proc.wait()
            code = None
    seconds = time.monotonic() - t0
    tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-15:]
    if code is None:
        check.record(name, "timed out", seconds, command=shown, error=f"still running after {timeout:.0f} s",
                     output_tail=tail)
        return
    summary_file = out / "summary.json"
    if code != 0 or not summary_file.is_file():
        errors = [ln for ln in tail if "error" in ln.lower()]
        check.record(name, "failed", seconds, command=shown, exit_code=code,
                     error=(errors or tail or ["no output"])[-1].strip(), output_tail=tail)
        return
    summary = json.loads(summary_file.read_text())
    phases = [json.loads(ln).get("phase") for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    epoch_s = summary.get("epoch_time_s")
    detail = {
        "command": shown, "epochs": summary.get("epochs"), "phases": phases, "world_size": summary.get("world_size"),
        "train_images": summary.get("train_size"), "epoch_time_s": epoch_s,
        "images_per_s": round(summary["train_size"] / epoch_s, 1) if epoch_s else None,
        "test_acc": summary.get("final", {}).get("test_acc"),
        "device": summary.get("config", {}).get("device"),
        "search": summary.get("config", {}).get("method", {}).get("search"),
        "use_gpu": summary.get("config", {}).get("distributed", {}).get("use_gpu"),
    }
    if "knn" not in phases:
        check.record(name, "failed", seconds, error=f"no neighbour-mixing epoch (phases {phases})", **detail)
    else:
        check.record(name, "ok", seconds, **detail)


def main():
    args = parse(sys.argv[2:])
    work = Path(args.work_dir).absolute() if args.work_dir else Path(tempfile.mkdtemp(prefix="knnmix-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args, work)
    gpu = check.mode == "gpu"
    print(f"gpu-check: {check.mode}, budget {check.budget:.0f} s, work dir {work}", flush=True)
    ray_tmp = None
    try:
        # env: versions and the GPU; without a CUDA device the GPU steps cannot run
        t0 = time.monotonic()
        try:
            v = versions()
            check.report["versions"] = v
            if gpu and not v["cuda_available"]:
                check.record("env", "failed", time.monotonic() - t0,
                             error="no CUDA device: torch.cuda.is_available() is False (use --dry-run on a CPU)")
            else:
                check.record("env", "ok", time.monotonic() - t0, gpu=v["gpu"], torch=v["torch"], cuda=v["cuda"])
        except Exception as exc:  # noqa: BLE001 -- a broken torch install is what this step reports
            check.record("env", "failed", time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        blocked = check.steps["env"]["status"] != "ok"

        # data: the CIFAR-format data set
        data_root = work / "data"
        t0 = time.monotonic()
        if blocked:
            check.record("data", "skipped", 0.0, reason="the env step failed")
        else:
            try:
                written = write_cifar10(data_root, check.size["per_batch"], check.size["test"])
                check.record("data", "ok", time.monotonic() - t0, **written)
            except Exception as exc:  # noqa: BLE001
                check.record("data", "failed", time.monotonic() - t0, error=f"{type(exc).__name__}: {exc}")
        blocked = blocked or check.steps["data"]["status"] != "ok"

        def train_step(name, extra, env=None, skip=None):
            cmd = train_command(check, name, data_root, extra)
            shown = shlex.join(["knnmix"] + cmd[3:])
            if blocked or skip:
                check.record(name, "skipped", 0.0, command=shown,
                             reason=skip or "an earlier step (env or data) failed")
            else:
                run_training(check, name, cmd, env)

        train_step("train_single", [])
        train_step("torch_search", ["--set", "method.search=torch"])

        # mixed precision: only what the config offers
        t0 = time.monotonic()
        amp = amp_setting()
        if amp is None:
            check.record("mixed_precision", "not offered", time.monotonic() - t0,
                         reason="no mixed-precision key in `knnmix config --doc` (amp, autocast, precision, ...)")
        elif amp[1] is None:
            check.record("mixed_precision", "failed", time.monotonic() - t0,
                         error=f"config key {amp[0]} looks like mixed precision, but this script does not know which "
                               "value turns it on: teach amp_setting() in scripts/gpu-check.sh")
        else:
            train_step("mixed_precision", ["--set", amp[1]])

        # 1-GPU Ray Train: a private local Ray (no RAY_ADDRESS), a short temp dir of its own (Ray's socket paths
        # live below it), a throwaway token
        ray_tmp = Path(tempfile.mkdtemp(prefix="gcray-", dir="/tmp"))
        ray_env = {"RAY_TMPDIR": str(ray_tmp)}
        if not any(os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
            ray_env["RAY_AUTH_TOKEN"] = secrets.token_hex(24)  # ray.init() would otherwise write ~/.ray/auth_token
        os.environ.pop("RAY_ADDRESS", None)
        train_step("ray_train", ["--workers", "1", "--set", f"distributed.use_gpu={'true' if gpu else 'false'}",
                                 "--set", f"distributed.cpus_per_worker={check.size['cpus_per_worker']}"],
                   env=ray_env, skip="--skip-ray" if args.skip_ray else None)
    finally:
        for name in STEPS:  # every step appears, whatever stopped the check
            check.steps.setdefault(name, {"status": "failed", "seconds": 0.0, "error": "the check stopped before it"})
        check.report["steps"] = {name: check.steps[name] for name in STEPS}
        check.steps = check.report["steps"]
        check.write()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        if ray_tmp is not None:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    bad = [n for n, s in check.steps.items() if s["status"] in ("failed", "timed out")]
    if bad:
        first = check.steps[bad[0]]
        print(f"gpu-check: error: {bad[0]} {first['status']}: {first.get('error', '')} (report: {args.out})",
              file=sys.stderr)
        return 1
    print(f"gpu-check: all steps passed in {check.report['total_s']:.0f} s; report: {args.out}")
    return 0


sys.exit(main())
PYTHON
