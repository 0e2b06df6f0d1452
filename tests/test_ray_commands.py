"""Ray Train runs driven from a shell as users drive them, each on a Ray of its own (the shared local Ray is shut
down first: one Ray at a time on 2 cores): ``ray job submit`` to a ``ray start`` head node with token authentication,
Ctrl+C on ``knnmix train --workers 2``, and ``knnmix train`` asking a joined ``ray start`` cluster for more workers
than it has, and knnmix's error line while Ray forwards an actor's output. A head node is stopped by process id
(``ray stop`` would stop every Ray process on the machine, other users' included).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from knnmix.engine.checkpoint import load_checkpoint
from knnmix.scale.train import START_TRIES, checkpoint_dir_name
from support import free_port, kill_tree

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the server answers (e.g. 401 without a token)
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.mark.slow
def test_ray_job_submit_runs_train_job_to_success(ray_session, tmp_path):
    import ray  # also puts Ray's vendored psutil on sys.path (used by kill_tree)

    ray.shutdown()  # one Ray at a time on this machine's 2 cores
    token = secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_TMPDIR=str(ray_session["tmp"] / "head"),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
    )
    (ray_session["tmp"] / "head").mkdir()
    gcs, dash, agent = free_port(), free_port(), free_port()
    # the submitted working dir: the sources and the job script only
    work = tmp_path / "work"
    shutil.copytree(REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "distributed", work / "distributed", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "job-out"
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats"],  # another Ray may hold 52365
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_http(f"{address}/api/version", timeout=120)
        # token authentication is on: the job API refuses a client without the token
        with pytest.raises(urllib.error.HTTPError) as refused:  # (a request, not a `ray job list` of ~2 CPU-s)
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=60)
        assert refused.value.code == 401
        for _ in range(12):  # the head's job agent comes up a little after its HTTP server: Ray asks to retry
            job = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(work),
                 "--runtime-env-json", json.dumps({"env_vars": {"KNNMIX_GIT_COMMIT": "c0ffee-submitted"}}), "--",
                 "python", "distributed/train_job.py", "--config", "digits", "--workers", "2", "--epochs", "2",
                 "--out", str(out), "--set", "data.train_subset=500"],
                env=env, capture_output=True, text=True, timeout=420,
            )
            logs = job.stdout + job.stderr
            if "No available agent" not in logs:
                break
            time.sleep(5)
        assert job.returncode == 0, logs[-4000:]
        assert "SUCCEEDED" in logs or "succeeded" in logs
        assert "epoch   2/2" in logs  # rank 0's progress lines reach the job's logs
        # ... and little else: knnmix's warnings in one line, none of Ray Train's per-worker, per-epoch INFO lines
        assert "knnmix: warning: knnmix never mixes neighbours" in logs and "KnnmixWarning" not in logs
        workers = [line for line in logs.splitlines() if "(RayTrainWorker pid=" in line]  # Ray's coloured prefix
        assert workers and not any("\x1b[" in line for line in workers), workers[:2]  # was escape codes in the log
        assert "Reporting training result" not in logs and "Started training worker group" not in logs
        for name in ("summary.json", "metrics.jsonl", "label_issues.csv", "config.yaml", "checkpoint.pt"):
            assert (out / name).exists(), name
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["epochs"] == 2
        assert summary["commit"] == "c0ffee-submitted"  # the uploaded copy has no .git: the submitter says which
        assert summary["config"]["out"] == str(out)
        assert (out / "ray" / "job-out" / checkpoint_dir_name(2)).is_dir()
        # a user error only the workers meet (the data is not where data.root says): the job's log ends with the
        # driver's one line, without the worker's traceback of it (~25 lines; one worker: each costs ~10 s of CPU)
        job = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(work), "--",
             "python", "distributed/train_job.py", "--dataset", "fashion-mnist", "--workers", "1", "--epochs", "1",
             "--out", str(tmp_path / "no-data"), "--set", f"data.root={tmp_path / 'nowhere'}"],
            env=env, capture_output=True, text=True, timeout=420,
        )
        logs = job.stdout + job.stderr
        assert job.returncode != 0 and "knnmix: error: fashion-mnist data not found at" in logs, logs[-4000:]
        assert "Error in training function" not in logs and "Traceback" not in logs, logs[-4000:]
    finally:
        kill_tree(head.pid)  # at once: its temp dir goes with the session's
        head_log.close()


@pytest.mark.slow
def test_ctrl_c_on_a_ray_train_run_is_one_line_with_status_130_and_keeps_its_checkpoint(
        tmp_path, interrupt_after_checkpoint):
    """Ray Train's SIGINT handler aborts the run and exits 1 silently: the driver printed nothing and looked failed.
    (One worker: the handler is the driver's, whatever the number of workers.)"""
    import signal

    with contextlib.suppress(ImportError):  # one Ray at a time on 2 cores: the driver below starts its own
        import ray

        ray.shutdown()
    run = tmp_path / "run"
    env = {**os.environ, "RAY_TMPDIR": str(Path("/tmp") / f"kx-int-{os.getpid()}")}
    env.pop("RAY_ADDRESS", None)
    args = ["train", "--config", "digits", "--epochs", "300", "--set", "data.train_subset=300", "--workers", "1",
            "--out", str(run)]
    try:
        code, err = interrupt_after_checkpoint(args, run, signal.SIGINT, env=env, wait_s=240)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert code == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("knnmix: interrupted; the same command with --resume"), err[-3000:]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] >= 1


@pytest.mark.slow
def test_more_workers_than_a_joined_cluster_has_warns_then_gives_up_in_one_line(ray_session, tmp_path):
    """A `ray start` head (not this machine's loopback Ray: it could autoscale) with 2 CPUs and 4 workers asked for:
    Ray Train retried its worker start-up forever, a traceback a minute; now a warning at once, and after
    START_TRIES start-up timeouts (0.2 s here) one line and status 2."""
    import ray

    ray.shutdown()  # one Ray at a time on 2 cores
    token = secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_TMPDIR=str(ray_session["tmp"] / "joined"),
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    (ray_session["tmp"] / "joined").mkdir()
    gcs = free_port()
    log, out = tmp_path / "head.log", open(tmp_path / "head.log", "w")
    head = subprocess.Popen(  # 127.0.0.2: a node address other than 127.0.0.1, as a cluster's head has
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.2", f"--port={gcs}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env={**env, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "0.2"}, stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        end = time.time() + 120  # under load the head took longer to start than knnmix took to try to join it
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.time() < end, log.read_text()[-2000:]
            time.sleep(0.5)
        proc = subprocess.run(
            [str(VENV_BIN / "knnmix"), "train", "--config", "digits", "--workers", "4", "--epochs", "1",
             "--out", str(tmp_path / "run"), "--set", "data.train_subset=300"],
            env={**env, "RAY_ADDRESS": f"127.0.0.2:{gcs}"}, capture_output=True, text=True, timeout=300,
        )
    finally:
        kill_tree(head.pid)  # at once: its temp dir goes with the session's
        out.close()
    err = proc.stderr
    assert proc.returncode == 2, err[-3000:]
    assert ("knnmix: warning: distributed.workers=4 x 1 CPU each needs 4 CPUs but the cluster has 2 now: waiting for "
            "nodes to join") in err
    line = (f"knnmix: error: Ray Train could not start distributed.workers=4 in {START_TRIES} start-up tries: the "
            "cluster lacks the CPUs or GPUs (`ray status`)")
    assert line in err.splitlines(), err[-3000:]
    # none of the controller's 33-line tracebacks, one a try (on this head without a dashboard, Ray Train's
    # placement-group cleaner may still print one of its own: it cannot reach the state API)
    assert "(TrainController" not in err and "WorkerGroupStartupTimeoutError" not in err, err[-3000:]


@pytest.mark.parametrize("interrupt", [False, True])
def test_the_last_line_is_whole_and_last_while_ray_forwards_an_actors_output(ray_session, capfd, interrupt,
                                                                             monkeypatch):
    """Ray prints its actors' lines from a thread of its own (Ray Train runs with them forwarded): a placement-group
    cleaner's traceback once ran into knnmix's error line and broke the test above. The error line, and the line of a
    Ctrl+C, now come after them."""
    import ray

    from knnmix.cli import guarded
    from knnmix.errors import KnnmixError
    from knnmix.scale import ray_env

    ray.shutdown()
    ray_env.ensure_ray(num_cpus=2, log_to_driver=True)
    monkeypatch.setattr(ray_env, "LEAVE_WITH_RAY", True)  # the knnmix program (cli.main sets it), not a caller

    @ray.remote(num_cpus=0)
    def chatter() -> None:
        while True:
            print("chatter " * 30, file=sys.stderr, flush=True)
            time.sleep(0.005)

    chatter.remote()
    seen, end = "", time.time() + 60
    while "chatter" not in seen:
        assert time.time() < end, "no actor output reached the driver"
        time.sleep(0.2)
        seen += capfd.readouterr().err

    def fails() -> int:
        raise KeyboardInterrupt if interrupt else KnnmixError("the cluster lacks the CPUs")

    assert guarded(fails) == (130 if interrupt else 2)
    time.sleep(1.0)  # forwarded lines arrive within a few hundred ms
    err = capfd.readouterr().err
    line = "knnmix: interrupted" if interrupt else "knnmix: error: the cluster lacks the CPUs"
    assert err.splitlines()[-1] == line, err[-500:]
