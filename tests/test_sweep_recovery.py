"""Stopped sweeps resume: after Ctrl+C each trial's line is printed again, a failed trial that ``--resume`` runs
again is logged and selected as it ended, and a sweep whose driver is killed mid-trial (with its Ray, like a lost head
node) finishes with ``--resume`` without running a trial twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from knnmix import spaces as SP
from knnmix import sweep_folder as SF
from knnmix import tracking as TR
from knnmix.cli import main as cli_main
from knnmix.engine.checkpoint import read_metrics, safe_load
from knnmix.scale import sweep as S
from knnmix.scale import sweep_mlflow as T
from support import BASE_SET, GOOD, client_for, descendants, kill_tree, runs_by_kind, write_space


# The killed-driver tests come first: the Ray the last one's --resume starts serves the two tests below it
# (one start fewer; conftest's no_idle_ray stops it after the file).
@pytest.mark.slow
def test_a_sweep_killed_before_tune_saved_its_trials_ends_resumes_from_their_run_folders(ray_session, tmp_path,
                                                                                           capsys):
    """Optuna writes at once, Tune saves its state every few seconds (here: once, at the start): killed after one
    trial ended and while another ran, --resume crashed ('Trial returned a result which did not include ... val_acc':
    the ended trial, restored as running, had nothing left to train and reported nothing; then Optuna's
    UpdateFinishedTrialError). Each trial now reports its run folder's epochs again, a trial its study has ended is
    not told twice, and a trial started after Tune's save (run afresh as a new one) leaves nothing running for good
    in Optuna or MLflow."""
    import optuna
    import ray

    ray.shutdown()  # one Ray at a time on 2 cores: the driver below starts its own
    params = {"method.k": {"type": "int", "low": 1, "high": 3},
              "data.train_subset": {"type": "choice", "values": [150, 1200]}}  # a short trial and a long one
    # the third trial is long too: a short one could end, and be told to its study, between the check and the kill
    space = write_space(tmp_path, base={"config": "digits", "set": {**BASE_SET, "epochs": 8}}, trials=3,
                        noise=["symmetric:0.2"], asha={"grace_period": 8}, params=params,
                        start_with=[{"method.k": 1, "data.train_subset": 150},
                                    {"method.k": 2, "data.train_subset": 1200},
                                    {"method.k": 3, "data.train_subset": 1200}])
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'runs.db'}"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "knnmix.cli", "sweep", str(space), "--out", str(out),
                               "--tracking-uri", uri], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "600"})
    trials, storage = out / "symmetric-0.2" / "trials", SF.SweepFolder(out).optuna_storage

    def killable() -> bool:  # the short trial told to its study, the long one past epoch 2, the third started
        done = [p for p in trials.glob("*") if (p / "summary.json").exists()]
        running = [p for p in trials.glob("*") if (p / "metrics.jsonl").exists() and not (p / "summary.json").exists()
                   and len(read_metrics(p / "metrics.jsonl")) >= 2]
        return bool(done and running) and len(list(trials.glob("*/run.json"))) == 3 and any(
            t.state.is_finished() for t in optuna.load_study(study_name="e2e/symmetric:0.2", storage=storage).trials)

    try:
        end = time.time() + 300
        while not killable():
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.time() < end, "no trial ended while the other ran"
            time.sleep(0.1)
    finally:
        kill_tree(driver.pid)  # the driver, its Ray and the trials, like a lost head node
        log.close()
    before = {p.name for p in trials.iterdir()}
    ray_session["start"](dashboard=False)  # as `knnmix sweep` starts it for in-process trials
    assert cli_main(["sweep", "--resume", "--out", str(out)]) == 0
    output = capsys.readouterr()
    assert "Traceback" not in output.err and "WARNING" not in output.err + output.out, output.err[-3000:]
    (x,) = json.loads((out / "sweep_summary.json").read_text())["settings"]
    (lost,) = before - set(x["trial_ids"])  # the trial started after Tune's save: started afresh as a new trial
    assert x["completed"] == 3 and len(before | set(x["trial_ids"])) == 4
    study = optuna.load_study(study_name="e2e/symmetric:0.2", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3 + ["FAIL"]  # the lost one's entry: ended
    for t in (t for t in study.trials if t.state.name == "COMPLETE"):  # every epoch once, the last too
        assert sorted(t.intermediate_values) == list(range(1, 9))
    for tid in x["trial_ids"]:
        assert [r["epoch"] for r in read_metrics(trials / tid / "metrics.jsonl")] == list(range(1, 9)), tid
    runs = {r.data.tags[T.TRIAL_TAG]: r.info.status for r in runs_by_kind(TR.Store.from_uri(uri).uri,
                                                                            "knnmix-sweep-e2e")["trial"]}
    assert runs == {**{tid: "FINISHED" for tid in x["trial_ids"]}, lost: "KILLED"}  # none RUNNING for good


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_running_a_trial_twice(ray_session, tmp_path, capsys):
    import ray

    ray.shutdown()  # one Ray at a time on 2 cores: the driver below starts its own
    space = write_space(tmp_path, base={"config": "digits", "set": {**BASE_SET, "epochs": 6}},
                        asha={"grace_period": 6}, max_concurrent_trials=1)  # one trial process, not two
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["sweep", str(space), "--out", str(out), "--tracking-uri", uri, "--set", "sweep.noise=[symmetric:0.2]"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "knnmix.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    trials = out / "symmetric-0.2" / "trials"
    interrupted = None
    try:
        end = time.time() + 300
        while interrupted is None:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.time() < end, "no trial got past its second epoch in time"
            for p in trials.glob("*") if trials.exists() else []:
                if (p / "metrics.jsonl").exists() and len(read_metrics(p / "metrics.jsonl")) >= 3 and not (
                        p / "summary.json").exists():
                    interrupted = p.name
            time.sleep(0.1)
        ray_processes = descendants(driver.pid)
    finally:
        kill_tree(driver.pid)  # the driver, its Ray and the trials, like a lost head node
        log.close()
    # in-process trials need no dashboard: the sweep's own Ray runs without its modules (its GCS is there)
    assert any("gcs_server" in c for c in ray_processes), ray_processes
    assert not any(c.startswith("ray-dashboard-") for c in ray_processes), ray_processes  # e.g. ...-StateHead-0
    assert cli_main(["sweep", str(space), "--out", str(out)]) == 2  # not without --resume
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err
    before = {p.name for p in trials.iterdir()}
    started = json.loads((trials / interrupted / "run.json").read_text())["started"]

    ray_session["start"](dashboard=False)  # as `knnmix sweep` starts it for in-process trials
    assert cli_main(["sweep", "--resume", "--out", str(out)]) == 0
    summary = json.loads((out / "sweep_summary.json").read_text())
    (x,) = summary["settings"]
    assert x["trials"] == 3 and len(set(x["trial_ids"])) == 3  # as many as an uninterrupted sweep
    assert before <= set(x["trial_ids"]) and {p.name for p in trials.iterdir()} == set(x["trial_ids"])
    # the interrupted trial continued its own run (run.json is written when a run starts, not when it resumes)
    assert json.loads((trials / interrupted / "run.json").read_text())["started"] == started
    for tid in x["trial_ids"]:
        epochs = [r["epoch"] for r in read_metrics(trials / tid / "metrics.jsonl")]
        assert epochs == list(range(1, 7)), tid  # no epoch lost or trained twice into the record
    # MLflow: one run per trial, each epoch logged once, parent runs reused
    client = client_for(TR.Store.from_uri(uri).uri)
    runs = runs_by_kind(TR.Store.from_uri(uri).uri, "knnmix-sweep-e2e")
    assert len(runs["sweep"]) == 1 and len(runs["noise_setting"]) == 1
    assert sorted(r.data.tags[T.TRIAL_TAG] for r in runs["trial"]) == sorted(x["trial_ids"])
    for r in runs["trial"]:
        steps = [int(m.step) for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, 7)), r.data.tags[T.TRIAL_TAG]
        assert r.info.status == "FINISHED" and r.data.tags[T.OUTCOME_TAG] == "completed"
    state = json.loads((out / "sweep_state.json").read_text())
    assert state["mlflow"]["sweep_run_id"] == runs["sweep"][0].info.run_id and state["status"] == "done"
    # resuming a finished sweep changes nothing; with --register it registers the best model (once)
    assert cli_main(["sweep", "--resume", "--out", str(out)]) == 0
    assert len(runs_by_kind(TR.Store.from_uri(uri).uri, "knnmix-sweep-e2e")["trial"]) == 3
    for _ in range(2):
        assert cli_main(["sweep", "--resume", "--out", str(out), "--register", "late"]) == 0
    (version,) = client.search_model_versions("name = 'late'")
    (x,) = json.loads((out / "sweep_summary.json").read_text())["settings"]
    assert version.run_id == x["best"]["mlflow_run_id"]


def test_a_resumed_sweep_prints_each_trials_line(sweep_ray, tmp_path, caplog):
    """Tune saves the TrialLogger without its echo; after --resume the trials that ended printed nothing (and the
    count started again at 1)."""
    import signal

    space = SP.load_space(write_space(tmp_path, base={"config": "digits", "set": {**BASE_SET, "epochs": 3,
                                                                                   "data.train_subset": 300}},
                                      noise=["symmetric:0.2"], trials=2, start_with=[GOOD],
                                      asha={"grace_period": 3}, max_concurrent_trials=1))
    lines: list[str] = []

    def stop_after_first(line: str) -> None:  # Ctrl+C once the first trial has ended
        lines.append(line)
        if line.lstrip().startswith("trial") and len([x for x in lines if x.lstrip().startswith("trial")]) == 1:
            signal.raise_signal(signal.SIGINT)

    out, store = tmp_path / "sweep", TR.Store.from_uri(f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.raises(KeyboardInterrupt):  # as distributed/sweep_job.py runs it
        S.run_sweep(space, out, store=store, echo=stop_after_first, command="python distributed/sweep_job.py")
    assert any(x.endswith(f"continue it with:\n  python distributed/sweep_job.py --resume --out {out}")
               for x in lines), lines
    assert "Tuner.restore" not in caplog.text  # Tune's own resume hint (knnmix names `knnmix sweep --resume`)
    client = store.client()
    exp = client.get_experiment_by_name(space.experiment_name).experiment_id

    def statuses() -> dict[str, str]:
        return {r.data.tags.get("knnmix.trial_id", r.data.tags["knnmix.kind"]): r.info.status
                for r in client.search_runs([exp])}

    stopped = statuses()  # MLflow's convention after Ctrl+C (was RUNNING for good): KILLED, the ended trial FINISHED
    assert sorted(stopped.values()) == ["FINISHED", "KILLED", "KILLED"] + ["KILLED"] * (len(stopped) == 4), stopped
    assert stopped["sweep"] == stopped["noise_setting"] == "KILLED"
    assert json.loads((out / "sweep_state.json").read_text())["status"] == "stopped"  # was "running"
    resumed: list[str] = []
    S.run_sweep(space, out, resume=True, echo=resumed.append)
    assert [x.split(" after ")[0].split()[:2] for x in resumed if x.lstrip().startswith("trial")] == [["trial", "2/2"]]
    assert set(statuses().values()) == {"FINISHED"} and len(statuses()) == 4
    assert json.loads((out / "sweep_state.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_a_failed_trial_that_resume_runs_again_is_logged_and_selected_as_it_ended(sweep_ray, tmp_path, capfd):
    """--resume runs a failed trial again (resume_errored), but its MLflow run stayed FAILED without the rerun's
    epochs, and its setting's run kept the old best, best tag, model and counts (it was finalized once). The failed
    trial's line says why; Tune's traceback and ERROR lines are --verbose only, and the JSON line comes last."""
    weights = tmp_path / "w.pt"  # missing at first: the trial that starts from it fails
    path = write_space(
        tmp_path, base={"config": "digits", "set": {**BASE_SET, "epochs": 2, "data.train_subset": 300}},
        noise=["symmetric:0.2"], trials=2, asha={"grace_period": 2}, max_concurrent_trials=1,
        params={"model.pretrained": {"type": "choice", "values": [None, str(weights)]}},
        start_with=[{"model.pretrained": None}, {"model.pretrained": str(weights)}])
    space = SP.load_space(path)
    out, store = tmp_path / "sweep", TR.Store.from_uri(f"sqlite:///{tmp_path / 'runs.db'}")
    capfd.readouterr()
    assert cli_main(["sweep", str(path), "--out", str(out), "--tracking-uri", store.uri]) == 1
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err and "ERROR" not in printed.out + printed.err, printed.err
    assert json.loads(printed.out.strip().splitlines()[-1])["failed"] == 1  # the JSON line last
    (why,) = [x for x in printed.out.splitlines() if x.startswith("failed: symmetric:0.2 trial ")]  # below the table
    assert why.endswith(f"pretrained weights file {weights} not found"), why
    assert (out / "sweep_summary.md").read_text().count(f"{weights} not found") == 1  # its own list, not twice
    assert printed.err.strip().splitlines()[-1] == f"knnmix: 1 trial(s) failed; see {out / 'sweep_summary.md'}"
    from ray.tune import ExperimentAnalysis  # one trial at a time (max_concurrent_trials=1, SettingsSearch's limit)

    first, second = sorted(ExperimentAnalysis(str(out / "tune")).trials, key=lambda t: t.run_metadata.start_time)
    assert second.run_metadata.start_time >= first.run_metadata.last_result_time > 0
    (done,) = (out / "symmetric-0.2" / "trials").glob("*/model_best.pt")
    torch.save(safe_load(done)["state_dict"], weights)
    lines: list[str] = []
    summary = S.run_sweep(space, out, resume=True, echo=lines.append)
    assert summary["failed"] == 0 and summary["settings"][0]["completed"] == 2
    assert [x.split(" after ")[0].split() for x in lines if x.lstrip().startswith("trial")] == [
        ["trial", "2/2", "completed"]]
    client, (setting,) = store.client(), summary["settings"]
    trials = runs_by_kind(store.uri, space.experiment_name)["trial"]
    assert {(r.info.status, r.data.tags[T.OUTCOME_TAG]) for r in trials} == {("FINISHED", "completed")}
    assert all(r.data.metrics["epochs_run"] == 2 and "val_acc" in r.data.metrics for r in trials)
    assert [r.data.tags[T.TRIAL_TAG] for r in trials if r.data.tags.get("knnmix.best")] == [setting["best"]["trial_id"]]
    run = client.get_run(setting["mlflow_run_id"])
    assert run.data.tags["knnmix.best_trial"] == setting["best"]["trial_id"] and run.data.metrics["failed"] == 0
    assert run.data.metrics["best_val_acc"] == setting["best"]["val_acc"]
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in models] == [setting["best_mlflow_run_id"]]  # one model, the best trial's
    # its study keeps the failure and holds the rerun's result beside it
    import optuna

    study = optuna.load_study(study_name=SF.study_name(space, space.settings[0]),
                              storage=SF.SweepFolder(out).optuna_storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    (rerun,) = [t for t in study.trials if t.state.name == "COMPLETE" and t.params == failed.params]
    trial = next(r for r in trials if r.data.params["model.pretrained"] == str(weights))
    assert rerun.value == trial.data.metrics["best_val_acc"]
