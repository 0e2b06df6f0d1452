"""Sweeps (``knnmix sweep``) on real Ray Tune + Optuna + ASHA over real Ray Train runs, logged to a real MLflow store.

The first tests need no Ray: the space schema and its one-line errors, and each space field reaching the object
that uses it (sampler, scheduler, resources, store). Then, on a local 2-CPU Ray with the dashboard (needed to clean
up a stopped trial's Ray Train placement group): one 2-noise-rate x 3-trial sweep on digits, read back through the
MLflow client and through ``mlflow server``'s REST API; a 1-trial sweep whose every sampled value is checked in the
trial's files; and a sweep whose driver is killed after its first trial, then resumed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from knnmix import config as C
from knnmix.cli import main as cli_main
from knnmix.engine.outputs import read_metrics
from knnmix.errors import ConfigError
from knnmix.scale import spaces as SP
from knnmix.scale import sweep as S
from knnmix.scale import tracking as T

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "search_spaces"
VENV_BIN = Path(sys.executable).parent

#: Trial settings of the sweeps below: 5 short epochs on digits, 2 Ray Train workers per trial.
BASE_SET = {"epochs": 5, "distributed.workers": 2, "method.warmup_epochs": 1, "log_every": 5}
PARAMS = {
    "method.k": {"type": "int", "low": 1, "high": 3},
    "method.temperature": {"type": "loguniform", "low": 0.5, "high": 2.0},
    "method.correction_start": {"type": "int", "low": 3, "high": 4},
    "method.correction_momentum": {"type": "uniform", "low": 0.8, "high": 0.95},
    "method.correction_period": {"type": "choice", "values": [1, 2]},
    "optim.lr": {"type": "loguniform", "low": 1.0e-5, "high": 0.1},
}
GOOD = {"method.k": 2, "method.temperature": 1.0, "method.correction_start": 3, "method.correction_momentum": 0.9,
        "method.correction_period": 1, "optim.lr": 0.05}
#: lr 1e-5 cannot learn anything in 2 epochs: ASHA (grace period 2) stops this start point behind GOOD.
BAD = {**GOOD, "method.k": 1, "optim.lr": 1.0e-5}


def space_data(**fields) -> dict:
    data = {
        "name": "e2e",
        "base": {"config": "digits", "set": dict(BASE_SET)},
        "noise": ["symmetric:0.2", "symmetric:0.5"],
        "trials": 3,
        "seed": 0,
        "asha": {"grace_period": 2, "reduction_factor": 2},
        "start_with": [GOOD, BAD],
        "params": PARAMS,
    }
    data.update(fields)
    return data


def write_space(folder: Path, name: str = "space.yaml", **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(space_data(**fields), sort_keys=False))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_by_kind(uri: str, experiment: str) -> dict[str, list]:
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out: dict[str, list] = {"sweep": [], "noise_setting": [], "trial": []}
    for r in runs:
        out[r.data.tags[T.KIND_TAG]].append(r)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The schema (no Ray)


def test_shipped_spaces_parse_and_round_trip():
    smoke = SP.load_space(SPACES / "smoke.yaml")
    assert smoke.name == "smoke" and [s.spec for s in smoke.noise] == ["symmetric:0.2", "symmetric:0.5"]
    assert smoke.trials == 3 and smoke.base().distributed.workers == 2 and smoke.base().data.name == "digits"
    assert SP.load_space("smoke").to_dict() == smoke.to_dict()  # a bare name finds search_spaces/smoke.yaml
    again = SP.parse_space(yaml.safe_load(smoke.to_yaml()), label="x.yaml")
    assert again.to_dict() == smoke.to_dict()
    need = {"cifar10.yaml": ["noise.cifar_n_dir=/data/cifar-n"], "cifar100.yaml": [], "fashion-mnist.yaml": [],
            "clothing1m.yaml": ["data.root=/data/clothing1m"]}
    for name, sets in need.items():
        space = SP.load_space(SPACES / name, sets)
        assert set(space.params) >= {"method.k", "method.temperature", "method.correction_start",
                                     "method.correction_momentum", "method.correction_period"}, name
        for s in space.noise:
            assert space.setting_config(s).noise.spec == s.spec
    cifar10 = SP.load_space(SPACES / "cifar10.yaml", need["cifar10.yaml"])
    assert {"symmetric:0.2", "symmetric:0.5", "symmetric:0.8", "asymmetric:0.4", "cifar10n:worse"} <= {
        s.spec for s in cifar10.noise}


def test_set_overrides_reach_the_base_run_and_the_space(tmp_path):
    path = write_space(tmp_path)
    space = SP.load_space(path, ["epochs=4", "method.mixup_alpha=0.5", "sweep.trials=5",
                                 "sweep.asha.grace_period=1", "sweep.params.method.k.high=2",
                                 "sweep.noise=[asymmetric:0.4]", "sweep.start_with=[]"])
    assert space.base().epochs == 4 and space.base().method.mixup_alpha == 0.5
    assert space.trials == 5 and space.asha.grace_period == 1 and space.params["method.k"].high == 2
    assert [s.spec for s in space.noise] == ["asymmetric:0.4"]
    # whole distributions too, and the file's own base.set keeps its values
    space = SP.load_space(path, ["sweep.params.method.k={type: choice, values: [3]}", "sweep.start_with=[]"])
    assert space.params["method.k"].values == (3,) and space.base().distributed.workers == 2


_BAD_CASES = [
    ({"trails": 3}, "trails: unknown field (did you mean 'trials'?)"),
    ({"trials": "three"}, "trials: expected an integer, got 'three' (str)"),
    ({"trials": 0}, "trials: 0 is out of range; use >= 1"),
    ({"seed": 1.5}, "seed: expected an integer, got 1.5 (float)"),
    ({"params": {"method.k": {"type": "int", "low": 5, "high": 1}}}, "params.method.k.high: 1 is below low=5"),
    ({"params": {"method.kk": {"type": "int", "low": 1, "high": 2}}},
     "params.method.kk: 'method.kk' is not a config key (did you mean 'method.k'?)"),
    ({"params": {"method.k": {"type": "uniform", "low": 1, "high": 2}}},
     "params.method.k.type: uniform draws real numbers but method.k is an integer; use int or choice"),
    ({"params": {"optim.lr": {"type": "choice", "values": ["fast"]}}},
     "params.optim.lr.values[0]: optim.lr: expected a number, got 'fast' (str)"),
    ({"params": {"method.k": {"type": "int", "low": 0, "high": 3}}},
     "params.method.k.low: method.k: 0 is out of range; use >= 1"),
    ({"params": {"method.k": {"type": "int", "low": 1, "high": 3.5}}},
     "params.method.k.high: expected an integer, got 3.5 (float)"),
    ({"params": {"method.k": {"type": "gauss", "low": 1, "high": 3}}},
     "params.method.k.type: 'gauss' (str) is not one of int, uniform, loguniform, choice"),
    ({"params": {"method.k": {"type": "int", "low": 1, "hi": 3}}}, "params.method.k.hi: unknown field"),
    ({"params": {"optim.lr": {"type": "loguniform", "low": 0, "high": 0.1}}},
     "params.optim.lr.low: 0.0 must be > 0 for a log scale"),
    ({"params": {"out": {"type": "choice", "values": ["x"]}}}, "params.out: out is set by the sweep"),
    ({"params": {"method.premix": {"type": "choice", "values": ["knn", "cutmix"]}}},
     "params.method.premix.values[1]: method.premix: 'cutmix' (str) is not one of mixup, knn, ce"),
    ({"noise": ["symmetric:0.2", "symetric:0.5"]}, "noise[1]: unknown noise model 'symetric'"),
    ({"noise": ["symmetric:0.2", "symmetric:1.5"]}, "noise[1]: noise rate 1.5 in 'symmetric:1.5' is outside"),
    ({"noise": ["symmetric:0.2", "symmetric:0.20"]}, "noise[1]: 'symmetric:0.2' is listed twice (also noise[0])"),
    ({"noise": ["cifar10n:worse"]}, "noise[0]: 'cifar10n:worse' is the human noise of cifar10, but data.name"),
    ({"noise": []}, "noise: expected a non-empty list of noise specs"),
    ({"metric": "test_acc"}, "metric: 'test_acc' (str) cannot be selected on: sweeps select on the noisy-validation "
     "accuracy 'val_acc' only"),
    ({"metric": "label_acc"}, "metric: 'label_acc' (str) cannot be selected on"),
    ({"mode": "min"}, "mode: 'min' (str): val_acc is maximised; use 'max'"),
    ({"asha": {"grace_period": 0}}, "asha.grace_period: 0 is out of range; use >= 1"),
    ({"asha": {"reduction_factor": 1}}, "asha.reduction_factor: 1 must be > 1"),
    ({"asha": {"max_t": 50}}, "asha.max_t: 50 is more than the base run's epochs=5"),
    ({"asha": {"grace": 2}}, "asha.grace: unknown field (did you mean 'asha.grace_period'?)"),
    ({"base": {"config": "digits", "set": {"method.kk": 3}}}, "base.set.method.kk: 'method.kk' is not a config key"),
    ({"base": {"config": "nopreset"}}, "base.config: config 'nopreset' is neither a file nor an embedded preset"),
    ({"base": {"config": "digits", "set": {"distributed.workers": 0}}},
     "base.set.distributed.workers: each trial is a Ray Train run"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "data.val_fraction": 0.0}}},
     "base.set.data.val_fraction: sweeps select on the noisy-validation accuracy (val_acc)"),
    ({"start_with": [{**GOOD, "optim.lr": 2.0}]}, "start_with[0].optim.lr: 2.0 (float) is outside loguniform"),
    ({"start_with": [{"method.k": 2}]}, "start_with[0]: gives no value for method.temperature"),
]


@pytest.mark.parametrize("fields, message", _BAD_CASES, ids=[m.split(":")[0] for _, m in _BAD_CASES])
def test_malformed_space_is_a_one_line_error_naming_the_field(tmp_path, capsys, fields, message):
    import ray

    path = write_space(tmp_path, "bad.yaml", **fields)
    with pytest.raises(ConfigError) as err:
        SP.load_space(path)
    text = str(err.value)
    assert text.startswith("search space bad.yaml: " + message), text
    assert "\n" not in text
    # the command line: the same line, exit status 2, before Ray starts
    assert cli_main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"knnmix: error: {text}"
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_test_accuracy_cannot_be_selected_on_in_any_way(tmp_path):
    # neither as the metric nor by overriding it from the command line
    path = write_space(tmp_path)
    for bad in (["sweep.metric=test_acc"], ["sweep.metric=test_acc", "sweep.mode=max"]):
        with pytest.raises(ConfigError, match="cannot be selected on"):
            SP.load_space(path, bad)
    space = SP.load_space(path)
    assert S.make_searcher(space).metric == "val_acc" and S.make_scheduler(space)._metric == "val_acc"
    assert "test_acc" not in json.dumps(space.to_dict())


# ----------------------------------------------------------------------------------------------------------------
# Each field reaches the object that uses it (no Ray running)


def _suggestions(searcher, n: int) -> list[dict]:
    return [searcher.suggest(f"t{i}") for i in range(n)]


def test_seed_and_startup_trials_reach_the_tpe_sampler(tmp_path):
    import optuna

    space = SP.load_space(write_space(tmp_path, start_with=[]))
    searcher = S.make_searcher(space, space.noise[0])
    assert isinstance(searcher._sampler, optuna.samplers.TPESampler)
    assert searcher.metric == "val_acc" and searcher.mode == "max"
    first = _suggestions(searcher, 4)
    assert first == _suggestions(S.make_searcher(space, space.noise[1]), 4)  # the same seed: the same draws
    other = SP.load_space(write_space(tmp_path, "s1.yaml", start_with=[], seed=1))
    assert _suggestions(S.make_searcher(other), 4) != first
    for s in first:  # inside the distributions, with the right types
        assert set(s) == set(PARAMS)
        assert isinstance(s["method.k"], int) and 1 <= s["method.k"] <= 3
        assert 1e-5 <= s["optim.lr"] <= 0.1 and s["method.correction_period"] in (1, 2)
    assert S.make_searcher(SP.load_space(write_space(tmp_path, "s2.yaml", startup_trials=2)))._sampler \
        ._n_startup_trials == 2
    # start points are the first suggestions
    started = S.make_searcher(SP.load_space(write_space(tmp_path, "s3.yaml")))
    assert _suggestions(started, 2) == [GOOD, BAD]


def test_asha_fields_reach_the_scheduler(tmp_path):
    space = SP.load_space(write_space(tmp_path, asha={"grace_period": 1, "reduction_factor": 3, "max_t": 4,
                                                       "brackets": 2}))
    sched = S.make_scheduler(space, space.epochs)
    assert sched._time_attr == "epoch" and sched._metric == "val_acc" and sched._metric_op == 1.0
    assert sched._max_t == 4 and sched._reduction_factor == 3 and len(sched._brackets) == 2
    assert [m for m, _ in sched._brackets[0]._rungs] == [3, 1]  # grace 1, x3, below max_t 4
    default = S.make_scheduler(SP.load_space(write_space(tmp_path, "d.yaml")), 5)
    assert default._max_t == 5 and [m for m, _ in default._brackets[0]._rungs] == [4, 2]  # max_t = epochs


def test_asha_stops_at_rungs_but_never_at_the_last_epoch(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    space = SP.load_space(write_space(tmp_path, asha={"grace_period": 1, "reduction_factor": 2}))
    sched = S.make_scheduler(space, 4)  # rungs at epochs 1, 2, 4
    a, b, c = (SimpleNamespace(trial_id=t) for t in "abc")
    for t in (a, b, c):
        sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, a, {"epoch": 1, "val_acc": 50.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b, {"epoch": 1, "val_acc": 10.0}) == TrialScheduler.STOP
    for epoch in (1, 2, 3):
        assert sched.on_trial_result(None, c, {"epoch": epoch, "val_acc": 60.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, a, {"epoch": 2, "val_acc": 55.0}) == TrialScheduler.STOP  # below c at 2
    # at the last epoch even a worse trial goes on (its label audit and summary follow the last report)
    d = SimpleNamespace(trial_id="d")
    sched.on_trial_add(None, d)
    for epoch in (1, 2, 3):
        sched.on_trial_result(None, d, {"epoch": epoch, "val_acc": 99.0})
    sched.on_trial_result(None, c, {"epoch": 4, "val_acc": 90.0})
    assert sched.on_trial_result(None, d, {"epoch": 4, "val_acc": 1.0}) == TrialScheduler.CONTINUE


def test_resumed_asha_records_the_rungs_trials_already_passed(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    space = SP.load_space(write_space(tmp_path, asha={"grace_period": 2, "reduction_factor": 2}))
    trials = tmp_path / "trials"
    (trials / "done").mkdir(parents=True)
    (trials / "done" / "metrics.jsonl").write_text(
        "".join(json.dumps({"epoch": e, "val_acc": 40.0 + e}) + "\n" for e in range(1, 6)))
    sched = S.make_scheduler(space, 5, trials)
    sched.on_trial_add(None, SimpleNamespace(trial_id="done", last_result={"epoch": 5}))
    rungs = dict(sched._brackets[0]._rungs)
    assert rungs == {4: {"done": 44.0}, 2: {"done": 42.0}}
    new = SimpleNamespace(trial_id="new", last_result={})
    sched.on_trial_add(None, new)
    sched.on_trial_result(None, new, {"epoch": 1, "val_acc": 30.0})
    assert sched.on_trial_result(None, new, {"epoch": 2, "val_acc": 30.0}) == TrialScheduler.STOP


def test_trial_resources_concurrency_and_config(tmp_path):
    space = SP.load_space(write_space(tmp_path))
    res = S.trial_resources()
    assert res["cpu"] == 0 and res["memory"] > 0
    cfg = space.base()
    assert S.max_concurrent(space, cfg, {"CPU": 2.0}) == 1  # 2 workers x 1 CPU per trial
    assert S.max_concurrent(space, cfg, {"CPU": 5.0}) == 2
    assert S.max_concurrent(space, cfg, {"CPU": 64.0}) == 3  # never more than the trials
    assert S.max_concurrent(space, cfg, {"CPU": 1.0}) == 1
    fixed = SP.load_space(write_space(tmp_path, "f.yaml", max_concurrent_trials=2))
    assert S.max_concurrent(fixed, cfg, {"CPU": 2.0}) == 2
    # the trial's config: sampled values, its run folder and a Ray Train run name from the trial id
    payload = {"config": C.to_dict(space.setting_config(space.noise[1])), "trials_dir": "/s/x/trials",
               "storage": "/s/x/ray"}
    cfg = S.trial_config(payload, {"method.k": 3, "optim.lr": 0.01}, "abc123")
    assert cfg.method.k == 3 and cfg.optim.lr == 0.01 and cfg.noise.spec == "symmetric:0.5"
    assert cfg.out == "/s/x/trials/abc123" and cfg.distributed.name == "abc123"
    assert cfg.distributed.storage_path == "/s/x/ray"


def test_tracking_store_default_and_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = T.Store.default()
    assert store.uri == f"sqlite:///{tmp_path}/mlflow.db" and store.artifact_root == str(tmp_path / "mlartifacts")
    assert store.ui_command() == (f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db "
                                  f"--default-artifact-root {tmp_path}/mlartifacts --host 127.0.0.1")
    rel = T.Store.from_uri("sqlite:///sub/x.db")
    assert rel.uri == f"sqlite:///{tmp_path}/sub/x.db" and rel.artifact_root == str(tmp_path / "sub" / "mlartifacts")
    remote = T.Store.from_uri("http://127.0.0.1:5000")
    assert remote.uri == "http://127.0.0.1:5000" and remote.artifact_root is None
    # the experiment gets an absolute artifact location
    exp = T.experiment_id(rel, "knnmix-test")
    assert client_for(rel.uri).get_experiment(exp).artifact_location == (tmp_path / "sub" / "mlartifacts" /
                                                                         "knnmix-test").as_uri()


# ----------------------------------------------------------------------------------------------------------------
# End to end: 2 noise rates x 3 trials on digits, each trial a 2-worker Ray Train run


@pytest.fixture(scope="module")
def e2e(ray_session, tmp_path_factory):
    ray_session["start"](dashboard=True)
    tmp = tmp_path_factory.mktemp("e2e")
    space = write_space(tmp)
    uri = f"sqlite:///{tmp / 'store' / 'runs.db'}"
    out = tmp / "sweep"
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["sweep", str(space), "--out", str(out), "--tracking-uri", uri])
    elapsed = time.perf_counter() - t0
    print(f"e2e sweep: {elapsed:.0f}s")
    return SimpleNamespace(rc=rc, out=out, uri=uri, text=buf.getvalue(), tmp=tmp, elapsed=elapsed,
                           summary=json.loads((out / "sweep_summary.json").read_text()))


@pytest.mark.slow
def test_sweep_completes_with_early_stopping_and_a_summary(e2e):
    assert e2e.rc == 0, e2e.text[-3000:]
    s = e2e.summary
    assert [x["noise"] for x in s["settings"]] == ["symmetric:0.2", "symmetric:0.5"]
    for x in s["settings"]:
        assert x["trials"] == 3 and x["failed"] == 0
        assert x["completed"] + x["stopped_early"] == 3
        assert x["stopped_early"] >= 1  # the lr=1e-5 start point, at the first rung
        best = x["best"]
        assert set(best["params"]) == set(PARAMS) and best["completed"]
        # the best config is the completed trial with the highest noisy-validation accuracy
        folder = Path(best["run_folder"])
        assert json.loads((folder / "summary.json").read_text())["best_val"]["val_acc"] == best["val_acc"]
        others = [json.loads((p / "summary.json").read_text())["best_val"]["val_acc"]
                  for p in folder.parent.iterdir() if (p / "summary.json").exists()]
        assert best["val_acc"] == max(others)
        assert best["params"]["optim.lr"] > 1e-4
    assert s["trials"] == 6 and s["stopped_early"] >= 2 and s["failed"] == 0
    # the terminal: the table, and the exact command that opens the store
    store = T.Store.from_uri(e2e.uri)
    assert "| noise | trials | stopped early | failed | best val acc (%) | its test acc (%) |" in e2e.text
    assert f"| symmetric:0.2 | 3 | " in e2e.text
    assert f"MLflow UI: {store.ui_command()}" in e2e.text
    md = (e2e.out / "sweep_summary.md").read_text()
    assert "symmetric:0.5" in md and s["settings"][1]["best"]["trial_id"] in md
    state = json.loads((e2e.out / "sweep_state.json").read_text())
    assert state["status"] == "done" and state["tracking"]["uri"] == store.uri
    assert set(state["mlflow"]["settings"]) == {"symmetric-0.2", "symmetric-0.5"}


@pytest.mark.slow
def test_noise_settings_reach_their_trials(e2e):
    for x in e2e.summary["settings"]:
        folders = [e2e.out / x["slug"] / "trials" / t for t in x["trial_ids"]]
        assert len(folders) == 3
        for f in folders:
            cfg = C.load(f / "config.yaml")
            assert cfg.noise.spec == x["noise"]
            import numpy as np

            with np.load(f / "noisy_labels.npz") as z:
                assert str(z["spec"]) == x["noise"]
                rate = float(np.mean(z["noisy_labels"] != z["true_labels"]))
            assert abs(rate - float(x["noise"].split(":")[1])) < 0.01


@pytest.mark.slow
def test_mlflow_holds_nested_runs_params_metrics_and_artifacts(e2e):
    import mlflow
    import mlflow.artifacts
    import mlflow.pytorch

    mlflow.set_tracking_uri(e2e.uri)  # models:/ URIs resolve through the tracking store
    client = client_for(e2e.uri)
    runs = runs_by_kind(e2e.uri, "knnmix-sweep-e2e")
    assert len(runs["sweep"]) == 1 and len(runs["noise_setting"]) == 2 and len(runs["trial"]) == 6
    sweep = runs["sweep"][0]
    settings = {r.info.run_id: r for r in runs["noise_setting"]}
    assert all(r.data.tags[T.PARENT_TAG] == sweep.info.run_id for r in settings.values())
    assert sorted(r.info.run_name for r in settings.values()) == ["symmetric:0.2", "symmetric:0.5"]
    assert all(r.info.status == "FINISHED" for r in runs["sweep"] + runs["noise_setting"])
    # the sweep run: the space, the summary, the best accuracy per noise rate
    arts = {a.path for a in client.list_artifacts(sweep.info.run_id)} | {
        a.path for a in client.list_artifacts(sweep.info.run_id, "plots")}
    assert {"space.yaml", "sweep_summary.json", "sweep_summary.md", "plots/best_per_noise.png"} <= arts
    assert sweep.data.params["trials"] == "3" and sweep.data.params["params.method.k"] == "int in [1, 3]"
    assert sweep.data.metrics["best_val_acc.symmetric-0.2"] == e2e.summary["settings"][0]["best"]["val_acc"]

    by_trial = {r.data.tags[T.TRIAL_TAG]: r for r in runs["trial"]}
    for x in e2e.summary["settings"]:
        setting = settings[x["mlflow_run_id"]]
        children = [r for r in runs["trial"] if r.data.tags[T.PARENT_TAG] == setting.info.run_id]
        assert sorted(r.data.tags[T.TRIAL_TAG] for r in children) == sorted(x["trial_ids"])
        outcomes = [r.data.tags[T.OUTCOME_TAG] for r in children]
        assert outcomes.count("stopped_early") == x["stopped_early"] and "failed" not in outcomes
        for r in children:
            folder = e2e.out / x["slug"] / "trials" / r.data.tags[T.TRIAL_TAG]
            cfg = C.load(folder / "config.yaml")
            # params: the resolved config, flattened, and the sampled values
            p = r.data.params
            assert p["noise.spec"] == x["noise"] and p["model.name"] == "small_cnn" and p["epochs"] == "5"
            assert p["method.k"] == str(cfg.method.k) == p["sampled.method.k"]
            assert float(p["optim.lr"]) == cfg.optim.lr == float(p["sampled.optim.lr"])
            assert set(p) >= {f"sampled.{k}" for k in PARAMS} | set(C.flatten(cfg))
            # metrics: one value per epoch, step = epoch, equal to the run folder's
            hist = client.get_metric_history(r.info.run_id, "val_acc")
            epochs = [int(m.step) for m in sorted(hist, key=lambda m: m.step)]
            assert epochs == list(range(1, len(epochs) + 1))
            want = {rec["epoch"]: rec["val_acc"] for rec in read_metrics(folder / "metrics.jsonl")}
            assert all(m.value == pytest.approx(want[int(m.step)]) for m in hist)
            assert len(epochs) == (5 if r.data.tags[T.OUTCOME_TAG] == "completed" else len(epochs)) >= 2
            assert len(client.get_metric_history(r.info.run_id, "test_acc")) == len(epochs)
            assert {"config.yaml", "noise_summary.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
        stopped = [r for r in children if r.data.tags[T.OUTCOME_TAG] == "stopped_early"]
        assert all(len(client.get_metric_history(r.info.run_id, "val_acc")) < 5 for r in stopped)
        # the noise summary: rate and transition matrix
        best_run = by_trial[x["best"]["trial_id"]]
        assert best_run.info.run_id == x["best"]["mlflow_run_id"] and best_run.data.tags["knnmix.best"] == "true"
        local = mlflow.artifacts.download_artifacts(
            run_id=best_run.info.run_id, artifact_path="noise_summary.json", dst_path=str(e2e.tmp / "dl"),
            tracking_uri=e2e.uri)
        noise = json.loads(Path(local).read_text())
        assert noise["spec"] == x["noise"] and len(noise["transition"]) == 10
        assert abs(noise["noise_rate"] - float(x["noise"].split(":")[1])) < 0.01
        # the setting's run: the best trial's label issues, the plots, the model
        arts = {a.path for a in client.list_artifacts(setting.info.run_id, "best_trial")} | {
            a.path for a in client.list_artifacts(setting.info.run_id, "plots")}
        assert {"best_trial/label_issues.csv", "best_trial/config.yaml", "plots/learning_curves.png",
                "plots/clean_prob_histogram.png", "plots/param_importances.png"} <= arts
        csv_path = mlflow.artifacts.download_artifacts(
            run_id=setting.info.run_id, artifact_path="best_trial/label_issues.csv", dst_path=str(e2e.tmp / "dl"),
            tracking_uri=e2e.uri)
        head = Path(csv_path).read_text().splitlines()[0].split(",")
        assert "clean_prob" in head and "true_label" in head
        model = mlflow.pytorch.load_model(x["model_uri"])
        best = torch.load(Path(x["best"]["run_folder"]) / "model_best.pt", weights_only=True)
        assert all(torch.equal(best[k], model.state_dict()[k]) for k in best)
        assert setting.data.metrics["best_val_acc"] == x["best"]["val_acc"]
        assert setting.data.metrics["stopped_early"] == x["stopped_early"]


@pytest.mark.slow
def test_mlflow_server_serves_the_sweep_over_rest(e2e):
    import psutil  # Ray's vendored copy, on sys.path once ray is imported

    store = T.Store.from_uri(e2e.uri)
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(e2e.tmp / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", store.uri, "--default-artifact-root",
         str(store.artifact_root), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() > end:
                    raise AssertionError((e2e.tmp / "mlflow-server.log").read_text()[-3000:]) from None
                time.sleep(1)

        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())

        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=knnmix-sweep-e2e", timeout=30) as r:
            exp_id = json.loads(r.read())["experiment"]["experiment_id"]
        found = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in found]
        kinds = [t.get(T.KIND_TAG) for t in tags]
        assert kinds.count("sweep") == 1 and kinds.count("noise_setting") == 2 and kinds.count("trial") == 6
        sweep_id = next(run["info"]["run_id"] for run, t in zip(found, tags) if t[T.KIND_TAG] == "sweep")
        setting_ids = {run["info"]["run_id"] for run, t in zip(found, tags) if t[T.KIND_TAG] == "noise_setting"}
        assert all(t[T.PARENT_TAG] == sweep_id for t in tags if t[T.KIND_TAG] == "noise_setting")
        assert all(t[T.PARENT_TAG] in setting_ids for t in tags if t[T.KIND_TAG] == "trial")
        trial_id = next(run["info"]["run_id"] for run, t in zip(found, tags) if t[T.KIND_TAG] == "trial")
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/metrics/get-history?run_id={trial_id}&metric_key=val_acc", timeout=30) as r:
            steps = sorted(m["step"] for m in json.loads(r.read())["metrics"])
        assert steps and steps == list(range(1, len(steps) + 1))
    finally:
        try:
            tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in reversed(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(tree, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        server.wait(timeout=10)
        log.close()


# ----------------------------------------------------------------------------------------------------------------
# Every searched key reaches the trial; the default store is the working directory's


@pytest.mark.slow
def test_every_sampled_value_reaches_the_trial_and_the_default_store(ray_session, tmp_path, monkeypatch):
    ray_session["start"](dashboard=True)
    monkeypatch.chdir(tmp_path)
    params = {
        "method.k": {"type": "choice", "values": [7]},
        "method.temperature": {"type": "choice", "values": [0.37]},
        "method.correction_start": {"type": "choice", "values": [2]},
        "method.correction_momentum": {"type": "choice", "values": [0.77]},
        "method.correction_period": {"type": "choice", "values": [3]},
        "method.warmup_epochs": {"type": "choice", "values": [1]},
        "optim.lr": {"type": "choice", "values": [0.033]},
    }
    path = write_space(tmp_path, name="fields", trials=1, start_with=[], params=params,
                       noise=[{"spec": "asymmetric:0.3", "set": {"method.loss_window": 2}}],
                       description="every field", experiment="knnmix-fields-test",
                       base={"config": "digits", "set": {**BASE_SET, "epochs": 3}})
    space = SP.load_space(path, ["sweep.name=fields"])
    assert S.default_out(space) == Path("runs/sweeps/fields")
    summary = S.run_sweep(space, tmp_path / "sweep", echo=None)  # no --tracking-uri: ./mlflow.db, ./mlartifacts
    (x,) = summary["settings"]
    assert x["trials"] == 1 and x["completed"] == 1
    folder = Path(x["best"]["run_folder"])
    cfg = C.load(folder / "config.yaml")
    assert (cfg.method.k, cfg.method.temperature, cfg.method.correction_start, cfg.method.correction_momentum,
            cfg.method.correction_period, cfg.method.warmup_epochs, cfg.optim.lr) == (7, 0.37, 2, 0.77, 3, 1, 0.033)
    assert cfg.noise.spec == "asymmetric:0.3" and cfg.epochs == 3 and cfg.distributed.workers == 2
    assert cfg.method.loss_window == 2  # the noise setting's own config keys
    # the search asked for K = 7: the trial's neighbour table has 7 columns
    ckpt = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["state"]["neighbours"].shape[1] == 7 and ckpt["config"]["method"]["k"] == 7
    assert [r["phase"] for r in read_metrics(folder / "metrics.jsonl")] == ["ce", "knn", "knn"]
    # its Ray Train run is named after the trial and lives in the setting's storage
    tid = x["best"]["trial_id"]
    assert cfg.distributed.name == tid and folder.name == tid
    assert (tmp_path / "sweep" / "asymmetric-0.3" / "ray" / tid / "checkpoint_manager_snapshot.json").exists()
    # the default store: the working directory's sqlite file and artifact folder
    assert (tmp_path / "mlflow.db").exists() and summary["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
    runs = runs_by_kind(f"sqlite:///{tmp_path}/mlflow.db", "knnmix-fields-test")  # the space's experiment
    (trial,) = runs["trial"]
    assert runs["sweep"][0].info.run_name == "fields"
    assert runs["sweep"][0].data.tags["mlflow.note.content"] == "every field"
    assert trial.data.params["method.k"] == "7" and trial.data.params["sampled.method.temperature"] == "0.37"
    assert trial.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert any((tmp_path / "mlartifacts").rglob("config.yaml"))


# ----------------------------------------------------------------------------------------------------------------
# A stopped driver resumes (runs last: it shuts the shared Ray down for a driver in a subprocess)


def _kill_tree(pid: int) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=15)


@pytest.mark.slow
def test_a_killed_sweep_resumes_without_running_a_trial_twice(e2e, ray_session, tmp_path):
    import ray

    ray.shutdown()  # one Ray at a time on 2 cores: the driver below starts its own
    space = write_space(tmp_path)  # the e2e space, first noise setting only
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'runs.db'}"
    args = ["sweep", str(space), "--out", str(out), "--tracking-uri", uri, "--set", "sweep.noise=[symmetric:0.2]"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "knnmix.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    trials = out / "symmetric-0.2" / "trials"
    interrupted = None
    try:
        end = time.time() + 420
        while interrupted is None:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.time() < end, "the first trial did not finish in time"
            done = [p for p in trials.glob("*") if (p / "summary.json").exists()] if trials.exists() else []
            running = [p for p in trials.glob("*") if p not in done and
                       (out / "symmetric-0.2" / "ray" / p.name / "checkpoint_epoch00001").exists()]
            if done and running:
                interrupted = running[0].name
                break
            time.sleep(0.2)
    finally:
        _kill_tree(driver.pid)  # the driver, its Ray and the trials, like a lost head node
        log.close()
    before = {p.name for p in trials.iterdir()}
    started = json.loads((trials / interrupted / "run.json").read_text())["started"]

    ray_session["start"](dashboard=True)
    assert cli_main(["sweep", "--resume", "--out", str(out)]) == 0
    summary = json.loads((out / "sweep_summary.json").read_text())
    (x,) = summary["settings"]
    assert x["trials"] == 3 and len(set(x["trial_ids"])) == 3  # as many as an uninterrupted sweep
    assert before <= set(x["trial_ids"]) and {p.name for p in trials.iterdir()} == set(x["trial_ids"])
    # the interrupted trial continued its own run (run.json is written when a run starts, not when it resumes)
    assert json.loads((trials / interrupted / "run.json").read_text())["started"] == started
    for tid in x["trial_ids"]:
        epochs = [r["epoch"] for r in read_metrics(trials / tid / "metrics.jsonl")]
        assert epochs == list(range(1, len(epochs) + 1)), tid  # no epoch trained twice into the record
    # Optuna's state was kept: the same three configs as the uninterrupted sweep's first noise setting
    uninterrupted = next(s for s in e2e.summary["settings"] if s["noise"] == "symmetric:0.2")
    ea = _sampled(e2e.out / "symmetric-0.2")
    eb = _sampled(out / "symmetric-0.2")
    assert len(uninterrupted["trial_ids"]) == 3 and eb == ea
    # MLflow: one run per trial, each epoch logged once, parent runs reused
    client = client_for(T.Store.from_uri(uri).uri)
    runs = runs_by_kind(T.Store.from_uri(uri).uri, "knnmix-sweep-e2e")
    assert len(runs["sweep"]) == 1 and len(runs["noise_setting"]) == 1
    assert sorted(r.data.tags[T.TRIAL_TAG] for r in runs["trial"]) == sorted(x["trial_ids"])
    for r in runs["trial"]:
        steps = [int(m.step) for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), r.data.tags[T.TRIAL_TAG]
        assert r.info.status == "FINISHED" and r.data.tags[T.OUTCOME_TAG] in ("completed", "stopped_early")
    state = json.loads((out / "sweep_state.json").read_text())
    assert state["mlflow"]["sweep_run_id"] == runs["sweep"][0].info.run_id
    assert state["status"] == "done"
    # resuming a finished sweep changes nothing
    assert cli_main(["sweep", "--resume", "--out", str(out)]) == 0
    assert len(runs_by_kind(T.Store.from_uri(uri).uri, "knnmix-sweep-e2e")["trial"]) == 3


def _sampled(setting_dir: Path) -> list[dict]:
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(setting_dir / "tune")).trials
    return sorted((dict(t.config) for t in trials), key=lambda c: json.dumps(c, sort_keys=True))


@pytest.mark.slow
def test_sweep_cost_compares_asha_with_the_same_sweep_run_to_the_end(local_ray, tmp_path):
    from knnmix.bench.sweepcost import run_sweep_cost

    overrides = ["sweep.noise=[symmetric:0.5]", "sweep.trials=3", "epochs=4", "distributed.workers=1"]
    result = run_sweep_cost(str(SPACES / "smoke.yaml"), overrides, tmp_path / "cost", echo=lambda s: None)
    asha, full = result["runs"]["asha"], result["runs"]["no_early_stopping"]
    assert asha["trials"] == full["trials"] == 3
    assert full["stopped_early"] == 0 and full["trial_epochs"] == 3 * 4  # grace period = the whole run
    assert asha["trial_epochs"] <= full["trial_epochs"]
    assert result["target_val_acc"] == min(asha["best_val_acc"], full["best_val_acc"])
    for run in (asha, full):
        assert 1 <= run["epochs_to_target"] <= run["trial_epochs"] and run["wall_s"] > 0
    assert result["total_epochs_ratio"] == asha["trial_epochs"] / full["trial_epochs"]
    assert "| no early stopping | 12 |" in result["text"]
