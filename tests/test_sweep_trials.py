"""A sweep's two trial paths on a local 2-CPU Ray: an in-process trial gives the same metrics as the same run on a
Ray Train worker; every sampled value reaches the trial's config, checkpoint and MLflow run; and trials of 2 Ray Train
workers each give their CPUs back when ASHA stops them, with another Ray instance running on the host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from knnmix import config as C
from knnmix import spaces as SP
from knnmix import tracking as TR
from knnmix.engine.checkpoint import load_checkpoint, read_metrics
from knnmix.scale import sweep as S
from support import BAD, BASE_SET, GOOD, VENV_BIN, free_port, kill_tree, runs_by_kind, write_space


@pytest.fixture
def other_ray(ray_session, tmp_path):
    """Another local Ray instance on this host (``ray start --head``), started before the sweep's own."""
    import tempfile

    import ray

    ray.shutdown()
    temp = Path(tempfile.mkdtemp(prefix="kx-other-", dir="/tmp"))  # short: Ray's socket paths live below it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(temp), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    log = open(tmp_path / "other-ray.log", "w")
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(free_port()), "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    end = time.time() + 180  # a margin: the suite keeps both cores busy
    while "Ray runtime started" not in (tmp_path / "other-ray.log").read_text():
        assert head.poll() is None and time.time() < end, (tmp_path / "other-ray.log").read_text()[-2000:]
        time.sleep(0.5)
    try:
        ray_session["start"]()  # the sweep's own Ray, second on the host (kept for the tests below: a start fewer)
        yield
    finally:
        kill_tree(head.pid)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_train_trials_run_and_release_their_workers_beside_another_ray(other_ray, tmp_path):
    """Trials of 2 Ray Train workers on the 2-CPU cluster, one at a time, with a second Ray instance running on the
    host: a trial ASHA stops must give its workers' CPUs back (Ray Train's placement-group cleaner must find the
    sweep's own Ray), or the next trial would wait forever. Two trials, the second stopped by ASHA before its last
    epoch; the CPUs it held must come back after the sweep (a third trial would show the same, at ~30 s of Ray Train
    start-up)."""
    import mlflow.artifacts
    import ray

    # 20% noise and batches of 16: GOOD learns within its first epoch (~37% noisy validation against BAD's ~13%).
    # 3 epochs: the workers do not wait for Tune to act on a result, and with 2 a stop decided after epoch 1 came once
    # after BAD had trained its last epoch and ended (a fresh clone's suite, 2026-12-05: stopped_early 0)
    path = write_space(tmp_path, name="workers", trials=2, start_with=[GOOD, BAD], noise=["symmetric:0.2"],
                       asha={"grace_period": 1, "reduction_factor": 2},
                       base={"config": "digits", "set": {**BASE_SET, "epochs": 3, "distributed.workers": 2,
                                                         "data.train_subset": 600, "optim.batch_size": 16,
                                                         "method.warmup_epochs": 3}})
    summary = S.run_sweep(SP.load_space(path), tmp_path / "sweep", store=TR.Store.from_uri(
        f"sqlite:///{tmp_path / 'm.db'}"), echo=None)
    (x,) = summary["settings"]
    assert x["trials"] == 2 and x["failed"] == 0 and x["stopped_early"] == 1
    # what both trials' rank 0 warned of, kept in run.json for the sweep to say (their own lines are not shown)
    assert x["warnings"] == {"knnmix never mixes neighbours: epochs=3 ends before its mixing phase starts in epoch 4 "
                             "(method.warmup_epochs=3, method.correction_start=3); lower them or train longer": 2}
    # ... and the setting's MLflow run has them
    got = mlflow.artifacts.download_artifacts(run_id=x["mlflow_run_id"], artifact_path="trial_warnings.json",
                                              dst_path=str(tmp_path), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert json.loads(Path(got).read_text()) == x["warnings"]
    best = Path(x["best"]["run_folder"])
    assert json.loads((best / "summary.json").read_text())["world_size"] == 2
    assert (tmp_path / "sweep" / "symmetric-0.2" / "ray" / best.name / "checkpoint_manager_snapshot.json").exists()
    end = time.time() + 60
    while ray.available_resources().get("CPU", 0) < 2:  # the stopped trial's placement group was freed
        assert time.time() < end, f"the stopped trial's CPUs were not given back: {ray.available_resources()}"
        time.sleep(0.5)


@pytest.mark.slow
def test_an_in_process_trial_and_a_ray_train_run_give_the_same_metrics(local_ray, tmp_path):
    from knnmix.scale.train import fit

    path = write_space(tmp_path, name="paths", trials=1, start_with=[GOOD], noise=["symmetric:0.5"],
                       base={"config": "digits", "set": {**BASE_SET, "epochs": 3}})
    summary = S.run_sweep(SP.load_space(path), tmp_path / "sweep", store=TR.Store.from_uri(
        f"sqlite:///{tmp_path / 'm.db'}"), echo=None)
    trial = Path(summary["settings"][0]["best"]["run_folder"])
    cfg = C.load(trial / "config.yaml")
    ray_run = fit(C.replace(cfg, **{"out": str(tmp_path / "ray-train"), "distributed.workers": 1,
                                    "distributed.storage_path": None, "distributed.name": None}))
    assert ray_run.summary["world_size"] == 1

    def numbers(folder):
        rows = read_metrics(folder / "metrics.jsonl")
        return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in rows]

    assert numbers(trial) == numbers(tmp_path / "ray-train")


@pytest.mark.slow
def test_every_sampled_value_reaches_the_trial_and_the_default_store(local_ray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = {
        "method.k": {"type": "choice", "values": [7]},
        "method.temperature": {"type": "choice", "values": [0.37]},
        "method.correction_start": {"type": "choice", "values": [2]},
        "method.correction_momentum": {"type": "choice", "values": [0.77]},
        "method.correction_period": {"type": "choice", "values": [3]},
        "method.warmup_epochs": {"type": "choice", "values": [1]},
        "method.mixture": {"type": "choice", "values": ["global"]},  # not the default
        "method.neighbours": {"type": "choice", "values": ["bank"]},
        "optim.lr": {"type": "choice", "values": [0.033]},
    }
    path = write_space(tmp_path, name="fields", trials=1, start_with=[], params=params,
                       noise=[{"spec": "asymmetric:0.3", "set": {"method.loss_window": 2}}],
                       description="every field", experiment="knnmix-fields-test",
                       base={"config": "digits", "set": {**BASE_SET, "epochs": 3}})
    space = SP.load_space(path, ["sweep.name=fields"])
    summary = S.run_sweep(space, tmp_path / "sweep", echo=None)  # no --tracking-uri: ./mlflow.db, ./mlartifacts
    (x,) = summary["settings"]
    assert x["trials"] == 1 and x["completed"] == 1
    folder = Path(x["best"]["run_folder"])
    cfg = C.load(folder / "config.yaml")
    assert (cfg.method.k, cfg.method.temperature, cfg.method.correction_start, cfg.method.correction_momentum,
            cfg.method.correction_period, cfg.method.warmup_epochs, cfg.optim.lr, cfg.method.mixture) == (
        7, 0.37, 2, 0.77, 3, 1, 0.033, "global")
    assert cfg.noise.spec == "asymmetric:0.3" and cfg.epochs == 3 and cfg.method.loss_window == 2
    ckpt = load_checkpoint(folder / "checkpoint.pt")  # the search asked for K = 7: 7 neighbour columns
    assert ckpt["state"]["neighbours"].shape[1] == 7 and ckpt["config"]["method"]["k"] == 7
    assert [r["phase"] for r in read_metrics(folder / "metrics.jsonl")] == ["ce", "knn", "knn"]
    assert cfg.distributed.name == folder.name == x["best"]["trial_id"]
    # the default store: the working directory's sqlite file and artifact folder
    assert (tmp_path / "mlflow.db").exists() and summary["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    runs = runs_by_kind(f"sqlite:///{tmp_path}/mlflow.db", "knnmix-fields-test")  # the space's experiment
    (trial,) = runs["trial"]
    assert runs["sweep"][0].info.run_name == "fields"
    assert runs["sweep"][0].data.tags["mlflow.note.content"] == "every field"
    assert trial.data.params["method.k"] == "7" and trial.data.params["sampled.method.temperature"] == "0.37"
    assert trial.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
