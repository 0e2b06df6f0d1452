"""Sweeps (``knnmix sweep``) on real Ray Tune + Optuna + ASHA, logged to a real MLflow store.

The first tests need no Ray: the space schema and its one-line errors, and each space field reaching the object that
uses it (samplers, schedulers, resources, store). Then, on a local 2-CPU Ray: one 2-noise-rate x 3-trial sweep on
digits with in-process trials, read back through the MLflow client, through ``mlflow server``'s REST API and through
Optuna's storage; and ``knnmix train`` logging its run to MLflow. The two trial paths and Ray Train trials are in
``test_sweep_trials.py``, stopped and resumed sweeps in ``test_sweep_recovery.py`` (files of their own, so that the
suite's pytest processes share the end-to-end tests evenly).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import select
import shutil
import signal
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from datetime import datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from knnmix import config as C
from knnmix.cli import main as cli_main
from knnmix.engine.checkpoint import read_metrics, safe_load
from knnmix.data import load_dataset
from knnmix.errors import ConfigError, KnnmixError, KnnmixWarning
from knnmix.provenance import command, git_commit
from knnmix import spaces as SP
from knnmix.scale import ray_env
from knnmix import sweep_folder as SF
from knnmix.scale import sweep as S
from knnmix import tracking as TR
from knnmix.scale import sweep_mlflow as T
from support import (BAD, BASE_SET, GOOD, PARAMS, VENV_BIN, client_for, descendants, free_port, listening_addresses,
                     runs_by_kind, space_data, write_space)

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "search_spaces"

# ----------------------------------------------------------------------------------------------------------------
# The schema (no Ray)


def test_shipped_spaces_parse_and_round_trip():
    smoke = SP.load_space(SPACES / "smoke.yaml")
    assert smoke.name == "smoke" and [s.spec for s in smoke.settings] == ["symmetric:0.2", "symmetric:0.5"]
    assert smoke.trials == 3 and smoke.base_config().data.name == "digits"
    assert SP.load_space("smoke").to_dict() == smoke.to_dict()  # a bare name finds the shipped space
    again = SP.parse_space(yaml.safe_load(smoke.to_yaml()), label="x.yaml")
    assert again.to_dict() == smoke.to_dict()
    need = {"cifar10.yaml": ["noise.cifar_n_dir=/data/cifar-n"], "cifar100.yaml": [], "fashion-mnist.yaml": [],
            "clothing1m.yaml": ["data.root=/data/clothing1m"]}
    for name, sets in need.items():
        space = SP.load_space(SPACES / name, sets)
        assert set(space.params) >= {"method.k", "method.temperature", "method.correction_start",
                                     "method.correction_momentum", "method.correction_period"}, name
        for s in space.settings:
            assert space.setting_config(s).noise.spec == s.spec
    cifar10 = SP.load_space(SPACES / "cifar10.yaml", need["cifar10.yaml"])
    assert {"symmetric:0.2", "symmetric:0.5", "symmetric:0.8", "asymmetric:0.4", "cifar10n:worse"} <= {
        s.spec for s in cifar10.settings}


def test_shipped_spaces_are_part_of_the_installed_package():
    """``knnmix sweep smoke`` works from an installed package: the spaces ship as ``knnmix.search_spaces``."""
    from importlib import resources

    shipped = Path(str(resources.files("knnmix.search_spaces")))
    assert (shipped / "smoke.yaml").read_text() == (SPACES / "smoke.yaml").read_text()
    assert SP.resolve_space_path("smoke") == shipped / "smoke.yaml"


def test_set_overrides_reach_the_base_run_and_the_space(tmp_path):
    path = write_space(tmp_path)
    space = SP.load_space(path, ["epochs=4", "method.mixup_alpha=0.5", "sweep.trials=5",
                                 "sweep.asha.grace_period=1", "sweep.params.method.k.high=2",
                                 "sweep.noise=[asymmetric:0.4]", "sweep.start_with=[]"])
    assert space.base_config().epochs == 4 and space.base_config().method.mixup_alpha == 0.5
    assert space.trials == 5 and space.asha.grace_period == 1 and space.params["method.k"].high == 2
    assert [s.spec for s in space.settings] == ["asymmetric:0.4"]
    # whole distributions too, and the file's own base.set keeps its values
    space = SP.load_space(path, ["sweep.params.method.k={type: choice, values: [3]}", "sweep.start_with=[]"])
    assert space.params["method.k"].values == [3] and space.base_config().method.warmup_epochs == 1


@pytest.mark.parametrize("override, message", [  # were "params.method.k.hgh: expected a mapping of keys, got 3 (int)"
    ("sweep.params.method.k.hgh=3", "--set sweep.params.method.k.hgh: 'hgh' is no field of a searched key (type, "
                                    "low, high, step, log, values) (did you mean 'high'?)"),
    ("sweep.params.method.kk.high=3", "--set sweep.params.method.kk.high: 'method.kk' is not searched in this space "
                                      "(it searches method.k, "),  # and "params.method.kk.type: missing (required)"
    # the base run's keys: were "search space space.yaml: base: unknown config key ...", as if the file's
    ("optim.lrr=0.1", "--set optim.lrr=0.1: unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("epochs=abc", "--set epochs=abc: epochs: expected an integer, got 'abc' (str)"),
    ("noise.spec=none", "--set noise.spec=none: set by the sweep for each trial (--out names the sweep's folder, a "
                        "setting its noise.spec; a trial's threads are distributed.cpus_per_worker); --set "
                        "'sweep.noise=[none]' chooses the noise settings"),
])
def test_a_misspelt_search_override_names_its_mistake(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        SP.load_space(write_space(tmp_path), [override])
    assert str(err.value).startswith(message), str(err.value)


_BAD_CASES = [
    ({"trails": 3}, "unknown field 'trails' (did you mean 'trials'?)"),
    ({"trials": "three"}, "trials: expected an integer, got 'three' (str)"),
    ({"trials": 0}, "trials: 0 is out of range; use >= 1"),
    ({"seed": 1.5}, "seed: expected an integer, got 1.5 (float)"),
    ({"params": {"method.k": {"type": "int", "low": 5, "high": 1}}}, "params.method.k: `low <= high` must hold"),
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
    ({"params": {"method.k": {"type": "int", "low": 1, "hi": 3}}},
     "unknown field 'params.method.k.hi' (did you mean 'params.method.k.high'?)"),
    ({"params": {"optim.lr": {"type": "loguniform", "low": 0, "high": 0.1}}},
     "params.optim.lr: `low > 0` must hold for `log=True`"),
    ({"params": {"method.k": {"type": "choice", "values": []}}}, "params.method.k.values: expected a non-empty list"),
    ({"params": {"method.k": {"type": "int", "low": 1, "high": 3, "step": 0}}},
     "params.method.k: `step > 0` must hold"),  # was taken as step 1
    ({"params": {"optim.momentum": {"type": "uniform", "low": 0.5, "high": 0.9, "log": True}}},
     "params.optim.momentum.log: only for type int; for a real number on a log scale use type loguniform"),
    ({"params": {"method.k": {"type": "choice", "values": [1, 2], "low": 0}}},
     "params.method.k.low: only for types int, uniform and loguniform, not choice"),
    ({"params": {"optim.lr": {"type": "uniform", "low": float("nan"), "high": 0.1}}},
     "params.optim.lr.low: expected a finite number, got nan (float)"),  # was 'expected an integer'
    ({"params": {"out": {"type": "choice", "values": ["x"]}}}, "params.out: out is set by the sweep, not searched (the "
                                                               "same for every trial: base.set or --set)"),
    ({"params": {"distributed.workers": {"type": "choice", "values": [1]}}},
     "params.distributed.workers: distributed.workers is set by the sweep"),
    ({"params": {"method.premix": {"type": "choice", "values": ["knn", "cutmix"]}}},
     "params.method.premix.values[1]: method.premix: 'cutmix' (str) is not one of mixup, knn, ce"),
    ({"params": {"method.k": {"type": "choice", "values": [1, 2, 1.0, 2]}}},
     "params.method.k.values: lists 2 twice"),  # 1 and 1.0 differ in type: the float is refused per value below
    ({"noise": ["symmetric:0.2", "symetric:0.5"]}, "noise[1]: unknown noise model 'symetric'"),
    ({"noise": ["symmetric:0.2", "symmetric:1.5"]}, "noise[1]: noise rate 1.5 in 'symmetric:1.5' is outside"),
    ({"noise": ["symmetric:0.2", "symmetric:0.20"]}, "noise[1]: 'symmetric:0.2' is listed twice (also noise[0])"),
    ({"noise": ["cifar10n:worse"]}, "noise[0]: noise.spec on digits: noise model 'cifar10n' holds human labels of "
     "CIFAR-10's training set; it needs dataset family 'cifar10', got 'digits'"),
    ({"noise": []}, "noise: expected a non-empty list of noise specs"),
    ({"noise": [{"spec": "symmetric:0.2", "set": {"out": "x"}}]}, "noise[0].set: noise.spec, out and threads are set"),
    ({"noise": [{"spec": "symmetric:0.2", "set": {"method.k": 9}}]},  # was silently replaced by the sampled k
     "noise[0].set: method.k: searched, so a noise setting cannot fix it; remove it from the setting's set"),
    ({"noise": ["symmetric:0.2", {"spec": "symmetric:0.5", "set": {"distributed.workers": 2}}]},  # the sweep hung
     "noise[1].set: distributed.* keys are the sweep's"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "out": "x"}}},  # --set out=X: was silently ignored
     "base.set: out: set by the sweep for each trial"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "threads": 2}}}, "base.set: threads: set by the sweep"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "method": {"k": 3}, "method.k": 4}}},  # the last one won
     "base.set: method.k is given twice (as a section's key and as a dotted key)"),
    ({"metric": "test_acc"}, "metric: 'test_acc' cannot be selected on: sweeps select on the noisy-validation "
     "accuracy 'val_acc' only"),
    ({"metric": "label_acc"}, "metric: 'label_acc' cannot be selected on"),
    ({"mode": "min"}, "mode: 'min': val_acc is maximised; use 'max'"),
    ({"asha": {"grace_period": 0}}, "asha.grace_period: 0 is out of range; use >= 1"),
    ({"asha": {"reduction_factor": 1}}, "asha.reduction_factor: 1 must be > 1"),
    ({"asha": {"max_t": 50}}, "asha.max_t: 50 is outside [1, the base run's epochs=5]"),
    ({"asha": {"grace": 2}}, "unknown field 'asha.grace' (did you mean 'asha.grace_period'?)"),
    ({"base": {"config": "digits", "set": {"method.kk": 3}}}, "base: unknown config key 'method.kk'"),
    ({"base": {"config": "nopreset"}}, "base.config: config 'nopreset' is neither a file nor an embedded preset"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "data.val_fraction": 0.0}}},
     "base.set.data.val_fraction: sweeps select on the noisy-validation accuracy (val_acc)"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "data.name": "webvision", "data.root": "/w",
                                           "data.val_fraction": 0.0}}},  # its validation images are its test split
     "base.set.data.val_fraction: sweeps select on the noisy-validation accuracy (val_acc): use a validation fraction "
     "> 0 (webvision ships no validation split)"),
    ({"noise": [{"spec": "symmetric:0.2", "set": {"data.val_fraction": 0}}]},  # Tune's traceback at the 1st epoch
     "noise[0].set.data.val_fraction: sweeps select on the noisy-validation accuracy (val_acc)"),
    ({"params": {**PARAMS, "data.val_fraction": {"type": "choice", "values": [0.1, 0.0]}}},
     "params.data.val_fraction.values[1]: sweeps select on the noisy-validation accuracy (val_acc)"),
    # a searched key that no trial reads: every trial trained the same, the sampler "learned" from noise
    ({"base": {"config": "digits", "set": {**BASE_SET, "method.name": "selc"}}},
     "params.method.k: no trial would use it: method selc does not read it (it reads method.correction_momentum, "
     "method.correction_period, method.correction_start); remove it from params"),
    ({"params": {**PARAMS, "method.name": {"type": "choice", "values": ["ce", "mixup"]}}, "start_with": []},
     "params.method.k: no trial would use it: method ce does not read it (it reads no method.* key); method mixup "
     "does not read it (it reads method.mixup_alpha); remove it"),
    ({"base": {"config": "digits", "set": {**BASE_SET, "method.correction_gate": "clean_prob"}}, "start_with": [],
      "params": {**PARAMS, "method.vote_k": {"type": "int", "low": 3, "high": 9}}},
     "params.method.vote_k: no trial would use it: knnmix does not read it with method.correction_gate=clean_prob"),
    ({"params": {**PARAMS, "optim.restart_period": {"type": "int", "low": 2, "high": 5}}, "start_with": []},
     "params.optim.restart_period: no trial would use it: only cosine_restarts reads it (optim.schedule=cosine)"),
    ({"params": {**PARAMS, "noise.instance_std": {"type": "uniform", "low": 0.05, "high": 0.2}}, "start_with": []},
     "params.noise.instance_std: no trial would use it: only instance noise reads it (noise.spec=symmetric:0.2)"),
    ({"start_with": [{**GOOD, "optim.lr": 2.0}]}, "start_with[0].optim.lr: 2.0 is outside loguniform in [1e-05, "
                                                  "0.1]; give a value inside it, or no start points (--set "
                                                  "'sweep.start_with=[]')"),
    ({"start_with": [{"method.k": 2}]}, "start_with[0]: gives no value for "),
    ({"start_with": [{**GOOD, "method.k": 2.0}]}, "start_with[0].method.k: 2.0 is not an integer: write 2 (method.k is "
                                                  "int in [1, 3])"),
]


@pytest.mark.parametrize("fields, message", _BAD_CASES, ids=[m.split(":")[0] for _, m in _BAD_CASES])
def test_malformed_space_is_a_one_line_error_naming_the_field(tmp_path, capsys, fields, message):
    import ray

    ray.shutdown()  # an earlier test's shared Ray may still be up (with -m "not slow"): this command must start none
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


def test_a_searched_key_that_only_some_trials_read_is_searched(tmp_path):
    # mixup_alpha is read by the mixup trials of a space searching method.name, instance_std by its instance setting
    mixup = {"method.name": {"type": "choice", "values": ["ce", "mixup"]},
             "method.mixup_alpha": {"type": "uniform", "low": 0.1, "high": 1.0}}
    assert set(SP.load_space(write_space(tmp_path, "a.yaml", params=mixup, start_with=[])).params) == set(mixup)
    std = {**PARAMS, "noise.instance_std": {"type": "uniform", "low": 0.05, "high": 0.2}}
    space = SP.load_space(write_space(tmp_path, "b.yaml", noise=["symmetric:0.2", "instance:0.3"], params=std,
                                      start_with=[]))
    assert "noise.instance_std" in space.params
    votes = {**PARAMS, "method.vote_k": {"type": "int", "low": 3, "high": 9},  # read by the trials of a voting gate
             "method.correction_gate": {"type": "choice", "values": ["clean_prob", "neighbours"]}}
    assert "method.vote_k" in SP.load_space(write_space(tmp_path, "c.yaml", params=votes, start_with=[])).params
    # a sweep started before knnmix refused such a space resumes: its folder's space.yaml runs as it started
    saved = space_data(base={"config": "digits", "set": {**BASE_SET, "method.name": "mixup"}})
    assert "method.k" in SP.parse_space(saved, label="space.yaml", root=tmp_path, started=True).params
    # a plug-in subclassing a built-in method, without its own `reads`, may read every key (its parent's do not bind)
    from knnmix.methods import METHODS
    from knnmix.methods.builtin import SELC

    METHODS.register("gated_selc")(type("GatedSELC", (SELC,), {}))
    try:
        plugin = space_data(base={"config": "digits", "set": {**BASE_SET, "method.name": "gated_selc"}})
        assert "method.k" in SP.parse_space(plugin, label="p.yaml", root=tmp_path).params
    finally:
        METHODS.unregister("gated_selc")
    assert "noise.instance_std" not in C.unread_keys(C.load(None, ["noise.spec=Instance:0.4"]))  # as the spec parses


def test_a_searched_key_set_to_null_is_no_longer_searched_nor_started_with(tmp_path):
    nested = {"method": {key.split(".")[1]: v for key, v in GOOD.items() if key.startswith("method.")},
              "optim": {"lr": GOOD["optim.lr"]}}
    for name, points in (("dotted.yaml", [GOOD, BAD]), ("nested.yaml", [nested])):
        space = SP.load_space(write_space(tmp_path, name, start_with=points), ["sweep.params.method.k=null"])
        assert "method.k" not in space.params and len(space.start_with) == len(points)
        assert all("method.k" not in point and "optim.lr" in point for point in space.start_with)
    with pytest.raises(ConfigError, match=r"--set sweep.params.method.kk=null: 'method.kk' is not searched in this "
                                          r"space \(it searches method.k, .*\(did you mean 'method.k'\?\)"):
        SP.load_space(write_space(tmp_path), ["sweep.params.method.kk=null"])


def test_a_space_whose_every_trial_skips_a_phase_warns_once_naming_it(tmp_path):
    import warnings

    from knnmix.errors import KnnmixWarning

    # epochs=2 with correction_start in [3, 4]: no trial mixes neighbours, so k, temperature &c. change nothing
    short = {"config": "digits", "set": {**BASE_SET, "epochs": 2}}
    with pytest.warns(KnnmixWarning) as caught:
        SP.load_space(write_space(tmp_path, "short.yaml", base=short, asha={"grace_period": 1}))
    assert [str(w.message) for w in caught] == [
        "search space short.yaml: no trial at symmetric:0.2, symmetric:0.5 reaches every phase: knnmix never mixes "
        "neighbours: epochs=2 ends before its mixing phase starts in epoch 3 (method.warmup_epochs=1, "
        "method.correction_start=3); lower them or train longer"]
    # with method.name searched, each method's trials are judged alone: no knnmix trial mixes, whatever ce does
    with pytest.warns(KnnmixWarning, match="short-ce.yaml: no trial at .* knnmix never mixes neighbours"):
        SP.load_space(write_space(tmp_path, "short-ce.yaml", base=short, asha={"grace_period": 1}, start_with=[],
                                  params={**PARAMS, "method.name": {"type": "choice", "values": ["knnmix", "ce"]}}))
    # a trial at the lowest correction_start (3 of 5 epochs) reaches it; a sweep folder's own space.yaml (resumed)
    # is not judged again
    with warnings.catch_warnings():
        warnings.simplefilter("error", KnnmixWarning)
        SP.load_space(write_space(tmp_path, "long.yaml"))
        SP.parse_space(yaml.safe_load((tmp_path / "short.yaml").read_text()), label="space.yaml", started=True)
    # noise under which a class mostly carries another's label, the noisy validation split too (a run warns of it
    # from the labels it draws, but a trial's warnings are not shown)
    with pytest.warns(KnnmixWarning, match=r"flips.yaml: at asymmetric:0.8, pairflip:0.6 most of each flipped class "
                                           r"carries the label it flips to, in the noisy validation split too"):
        SP.load_space(write_space(tmp_path, "flips.yaml", noise=["asymmetric:0.8", "pairflip:0.6", "asymmetric:0.4"]))


def test_registered_version_is_the_newest_of_the_run_tagged_and_takes_a_quote_in_its_name(tmp_path):
    store = TR.Store.from_uri(f"sqlite:///{tmp_path / 'm.db'}")
    client = store.client()
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    assert TR.registered_version(store, "it's", run_id, {}) is None
    client.create_registered_model("it's")  # MLflow takes a ' in a model name; its search filter cannot quote it
    for source in ("a", "b"):
        client.create_model_version("it's", str(tmp_path / source), run_id=run_id)
    assert TR.registered_version(store, "it's", run_id, {"knnmix.noise_spec": "none"}) == "models:/it's/2"
    assert client.get_model_version("it's", "2").tags == {"knnmix.noise_spec": "none"}
    TR.register_once(store, str(tmp_path / "b"), run_id, "it's")  # a version from this run exists: none added
    assert len(client.search_model_versions(f"run_id = '{run_id}'")) == 2


def test_unreadable_space_file_or_a_folder_is_one_line(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError, match=r"^search space bin.yaml: the file cannot be read as YAML text \(UTF-8\): "):
        SP.load_space(binary)
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"^search space '.*dir.yaml' is a folder, not a YAML file \(shipped"):
        SP.load_space(tmp_path / "dir.yaml")


def test_test_accuracy_cannot_be_selected_on_in_any_way(tmp_path):
    path = write_space(tmp_path)
    for bad in (["sweep.metric=test_acc"], ["sweep.metric=test_acc", "sweep.mode=max"]):
        with pytest.raises(ConfigError, match="cannot be selected on"):
            SP.load_space(path, bad)
    space = SP.load_space(path)
    assert S.make_study(space, space.settings[0]).metric == "val_acc" and S.make_asha(space).metric == "val_acc"
    assert "test_acc" not in json.dumps(space.to_dict())


# ----------------------------------------------------------------------------------------------------------------
# Each field reaches the object that uses it (no Ray running)


def _suggestions(searcher, n: int, prefix: str = "t") -> list[dict]:
    return [searcher.suggest(f"{prefix}{i}") for i in range(n)]


def test_seeds_and_startup_trials_reach_each_settings_sampler(tmp_path):
    import optuna

    space = SP.load_space(write_space(tmp_path, start_with=[]))
    a, b = (S.make_study(space, s) for s in space.settings)
    assert isinstance(a._sampler, optuna.samplers.TPESampler) and a.metric == "val_acc" and a.mode == "max"
    first = _suggestions(a, 4)
    assert first == _suggestions(S.make_study(space, space.settings[0]), 4)  # seeded: the same draws again
    assert _suggestions(b, 4) != first  # each setting draws from its own seed
    other = SP.load_space(write_space(tmp_path, "s1.yaml", start_with=[], seed=1))
    assert _suggestions(S.make_study(other, other.settings[0]), 4) != first
    for s in first:  # inside the distributions, with the right types
        assert set(s) == set(PARAMS)
        assert isinstance(s["method.k"], int) and 1 <= s["method.k"] <= 3
        assert 1e-5 <= s["optim.lr"] <= 0.1 and s["method.correction_period"] in (1, 2)
    # start-up trials: the space's value, else scaled to the budget so that a small sweep still searches
    assert S.make_study(SP.load_space(write_space(tmp_path, "s2.yaml", startup_trials=5)), space.settings[0]) \
        ._sampler._n_startup_trials == 5
    assert [SF.startup_trials(SP.load_space(write_space(tmp_path, f"n{n}.yaml", trials=n))) for n in (3, 16, 100)] \
        == [2, 4, 10]
    # start points are each setting's first suggestions
    started = SP.load_space(write_space(tmp_path, "s3.yaml"))
    assert _suggestions(S.make_study(started, started.settings[1]), 2) == [GOOD, BAD]


def test_one_study_per_setting_behind_one_searcher_round_robin(tmp_path):
    from ray.tune.search import Searcher

    space = SP.load_space(write_space(tmp_path, trials=2, start_with=[]))
    studies = {s.slug: S.make_study(space, s) for s in space.settings}
    alone = _suggestions(S.make_study(space, space.settings[1]), 2, "x")
    search = S.SettingsSearch(studies, space.trials)
    got = _suggestions(search, 4)
    assert [g[S.SETTING_KEY] for g in got] == ["symmetric-0.2", "symmetric-0.5"] * 2
    assert [{k: v for k, v in g.items() if k != S.SETTING_KEY} for g in got[1::2]] == alone
    assert search.suggest("t4") == Searcher.FINISHED  # 2 settings x 2 trials
    # it limits the trials running at once itself (Tune's ConcurrencyLimiter then passes every call through)
    limited = S.SettingsSearch({s.slug: S.make_study(space, s) for s in space.settings}, space.trials)
    assert limited.set_max_concurrency(1) and isinstance(limited.suggest("a"), dict) and limited.suggest("b") is None
    limited.on_trial_complete("a", None, error=True)
    assert isinstance(limited.suggest("b"), dict)
    # results go to the trial's own study
    search.on_trial_complete("t1", {"val_acc": 12.5, "training_iteration": 1})
    assert [t.value for t in studies["symmetric-0.5"]._ot_study.trials if t.value is not None] == [12.5]
    assert not [t for t in studies["symmetric-0.2"]._ot_study.trials if t.value is not None]
    # Tune saves and restores the searcher
    search.save(str(tmp_path / "searcher.pkl"))
    again = S.SettingsSearch({}, 0)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.setting_of == search.setting_of and again.trials == 2


def test_a_resumed_trial_reporting_a_redone_epoch_again_warns_of_nothing(tmp_path):
    """A trial restored from its checkpoint reports the epochs it redoes again; Optuna printed a UserWarning for
    each ("The reported value is ignored because this `step=1` is already reported") in the resumed sweep's output."""
    import warnings

    space = SP.load_space(write_space(tmp_path, trials=1, start_with=[], noise=["symmetric:0.2"]))
    study = S.make_study(space, space.settings[0])
    search = S.SettingsSearch({space.settings[0].slug: study}, 1)
    search.suggest("t0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in (10.0, 11.0):  # the epoch as first reported, then as redone after the restore
            search.on_trial_result("t0", {"val_acc": value, "training_iteration": 1})
    (trial,) = study._ot_study.trials
    assert trial.intermediate_values == {1: 10.0}  # Optuna keeps the first report


def test_a_failed_trial_run_again_adds_its_result_to_the_study_beside_the_failure(tmp_path):
    """--resume runs a failed trial again under the same id; its study had ended it as FAIL, and Ray's OptunaSearch
    dropped the second completion with a warning: the sampler never learned the rerun's value, optuna-dashboard
    and the importances showed a failure."""
    from optuna.trial import TrialState

    space = SP.load_space(write_space(tmp_path, trials=2, start_with=[], noise=["symmetric:0.2"]))
    study = S.make_study(space, space.settings[0])
    search = S.SettingsSearch({space.settings[0].slug: study}, 2)
    config = search.suggest("t0")
    search.on_trial_complete("t0", None, error=True)
    search.on_trial_result("t0", {"val_acc": 30.0, "training_iteration": 1})  # the rerun
    search.on_trial_complete("t0", {"val_acc": 25.0, "training_iteration": 2,  # flattened, as Tune passes it
                                    **{f"config/{k}": v for k, v in config.items()}})
    first, rerun = study._ot_study.trials
    assert first.state == TrialState.FAIL and rerun.state == TrialState.COMPLETE
    assert rerun.params == {k: v for k, v in config.items() if k != S.SETTING_KEY} == first.params
    assert rerun.value == 30.0  # its best epoch, as for every trial
    search.on_trial_complete("t0", None, error=True)  # failed again: nothing more to record
    assert len(study._ot_study.trials) == 2


def test_a_searcher_saved_before_its_running_and_ended_sets_resumes(tmp_path):
    """Tune pickles the searcher with the experiment: resuming a sweep saved by the SettingsSearch before its
    ``live`` / ``ended`` / ``max_concurrent`` fields failed at once ("'SettingsSearch' object has no attribute
    'ended'"), as did the searcher state it saves every few seconds."""
    import pickle

    space = SP.load_space(write_space(tmp_path, trials=2, start_with=[], noise=["symmetric:0.2"]))
    search = S.SettingsSearch({space.settings[0].slug: S.make_study(space, space.settings[0])}, 2)
    search.suggest("t0")
    for name in ("live", "ended", "max_concurrent"):
        search.__dict__.pop(name, None)  # as the older class saved it
    (tmp_path / "searcher.pkl").write_bytes(pickle.dumps(search.__dict__))
    for old in (pickle.loads(pickle.dumps(search)), S.SettingsSearch({}, 0)):
        old.restore(str(tmp_path / "searcher.pkl"))
        assert old.set_max_concurrency(2) and isinstance(old.suggest("t1"), dict)
        old.on_trial_complete("t0", {"val_acc": 20.0, "training_iteration": 1})
        assert old.ended == {"t0"} and old.live == {"t1"}


def test_asha_fields_reach_each_settings_scheduler(tmp_path):
    space = SP.load_space(write_space(tmp_path, asha={"grace_period": 1, "reduction_factor": 3, "max_t": 4,
                                                       "brackets": 2}))
    sched = S.make_asha(space)
    assert sched._time_attr == "epoch" and sched.metric == "val_acc" and sched._metric_op == 1.0  # max
    assert sched._max_t == 4 and sched._reduction_factor == 3 and len(sched._brackets) == 2
    assert S.make_asha(SP.load_space(write_space(tmp_path, "d.yaml")))._max_t == 5  # max_t = epochs


def _trial(tid: str, setting: str, last: int = 0):
    return SimpleNamespace(trial_id=tid, config={S.SETTING_KEY: setting}, last_result={"epoch": last} if last else {})


def test_the_best_trial_of_a_tie_is_the_first_created(tmp_path):
    """Trial ids are random: a tie broken by id could pick another config each time the same sweep runs."""
    def record(tid: str, val: float) -> SF.TrialRecord:
        return SF.TrialRecord(tid, "TERMINATED", "s", {}, tmp_path, [{"epoch": 1, "val_acc": val}], completed=True)

    trials = [record("ffff0000", 20.0), record("0000ffff", 20.0), record("88888888", 10.0)]  # in creation order
    assert SF.best_trial(trials).trial_id == "ffff0000"
    assert SF.best_trial(trials[1:]).trial_id == "0000ffff"


def test_settings_asha_compares_trials_within_their_setting_only(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    space = SP.load_space(write_space(tmp_path, asha={"grace_period": 1, "reduction_factor": 2}))
    sched = S.SettingsASHA({s.slug: S.make_asha(space, 4) for s in space.settings})
    a, b, c = _trial("a", "symmetric-0.2"), _trial("b", "symmetric-0.2"), _trial("c", "symmetric-0.5")
    for t in (a, b, c):
        sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, a, {"epoch": 1, "val_acc": 50.0}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b, {"epoch": 1, "val_acc": 10.0}) == TrialScheduler.STOP  # behind a
    # c is far behind a and b but alone in its setting: it goes on
    assert sched.on_trial_result(None, c, {"epoch": 1, "val_acc": 1.0}) == TrialScheduler.CONTINUE


def test_a_restored_trial_replays_its_epochs_into_its_asha(tmp_path):
    from ray.tune.schedulers import TrialScheduler

    space = SP.load_space(write_space(tmp_path, asha={"grace_period": 2, "reduction_factor": 2}))
    done = tmp_path / "sweep" / "symmetric-0.2" / "trials" / "done"
    done.mkdir(parents=True)
    (done / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": 40.0 + e}) + "\n"
                                                for e in range(1, 6)))
    sched = S.SettingsASHA({s.slug: S.make_asha(space, 5) for s in space.settings},
                           partial(S.run_history, str(tmp_path / "sweep")))
    sched.on_trial_add(None, _trial("done", "symmetric-0.2", last=5))
    new = _trial("new", "symmetric-0.2")
    sched.on_trial_add(None, new)
    sched.on_trial_result(None, new, {"epoch": 1, "val_acc": 30.0})
    assert sched.on_trial_result(None, new, {"epoch": 2, "val_acc": 30.0}) == TrialScheduler.STOP  # below 42 at 2


def test_trial_resources_concurrency_and_config(tmp_path):
    space = SP.load_space(write_space(tmp_path))
    cfg = space.base_config()
    assert S.in_process(cfg) and S.trial_resources(cfg) == {"cpu": 1}
    assert SF.max_concurrent(space, cfg, {"CPU": 2.0}) == 2  # one CPU per in-process trial
    assert SF.max_concurrent(space, cfg, {"CPU": 64.0}) == 6  # never more than every trial of the sweep
    ray_train = C.replace(cfg, **{"distributed.workers": 2})
    res = S.trial_resources(ray_train)
    assert res["cpu"] == 0 and res["memory"] > 0  # its workers reserve the CPUs
    assert SF.max_concurrent(space, ray_train, {"CPU": 2.0}) == 1
    assert SF.max_concurrent(space, ray_train, {"CPU": 5.0}) == 2
    fixed = SP.load_space(write_space(tmp_path, "f.yaml", max_concurrent_trials=3))
    assert SF.max_concurrent(fixed, cfg, {"CPU": 2.0}) == 3
    # the trial's config: its setting's, the sampled values, its run folder, Ray Train name, threads
    payload = {"configs": {s.slug: C.to_dict(space.setting_config(s)) for s in space.settings}, "root": "/s"}
    trial = SF.trial_config(payload, "symmetric-0.5", {"method.k": 3, "optim.lr": 0.01}, "abc123")
    assert trial.method.k == 3 and trial.optim.lr == 0.01 and trial.noise.spec == "symmetric:0.5"
    assert trial.out == "/s/symmetric-0.5/trials/abc123" and trial.distributed.name == "abc123"
    assert trial.distributed.storage_path == "/s/symmetric-0.5/ray" and trial.threads == 1


def test_tracking_store_default_env_and_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = TR.Store.resolve()
    assert store.uri == f"sqlite:///{tmp_path}/mlflow.db" and store.artifact_root == str(tmp_path / "mlartifacts")
    assert store.ui_command() == ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "
                                  f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db "
                                  f"--default-artifact-root {tmp_path}/mlartifacts --host 127.0.0.1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env/x.db")
    assert TR.Store.resolve().uri == f"sqlite:///{tmp_path}/env/x.db"  # MLflow's own variable is honoured
    assert TR.Store.resolve("sqlite:///flag.db").uri == f"sqlite:///{tmp_path}/flag.db"  # the flag wins
    remote = TR.Store.from_uri("http://127.0.0.1:5000")
    assert remote.uri == "http://127.0.0.1:5000" and remote.artifact_root is None
    for folder in ("mlruns", "file:///tmp/mlruns", "file:mlruns"):  # refused before a run, not after it trained
        with pytest.raises(KnnmixError, match=re.escape("(MLflow's deprecated file store) is not supported")):
            TR.Store.from_uri(folder)
    with pytest.raises(KnnmixError, match="'sqlite:x.db' is not a URI"):
        TR.Store.from_uri("sqlite:x.db")
    # the experiment gets an absolute artifact location and opens in the UI's model-training view
    rel = TR.Store.from_uri("sqlite:///sub/x.db")
    exp = client_for(rel.uri).get_experiment(TR.experiment_id(rel, "knnmix-test"))
    assert exp.artifact_location == (tmp_path / "sub" / "mlartifacts" / "knnmix-test").as_uri()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    # MLflow's git tag is a bare sha (its UI links it); uncommitted changes are a tag of their own
    for commit, tags in (("0f1e2d-dirty", {"mlflow.source.git.commit": "0f1e2d", TR.DIRTY_TAG: "true"}),
                         ("0f1e2d", {"mlflow.source.git.commit": "0f1e2d"}), ("unknown", {})):
        rid = TR.create_run(rel, exp.experiment_id, commit, {}, commit=commit)
        logged = client_for(rel.uri).get_run(rid).data.tags
        assert {k: logged[k] for k in ("mlflow.source.git.commit", TR.DIRTY_TAG) if k in logged} == tags, commit


def test_a_sqlite_store_is_read_as_sqlalchemy_reads_it_and_a_path_mlflow_cannot_hold_is_one_line(
        tmp_path, monkeypatch, capsys):
    """In a working directory named 'a?b' the default store's runs went to a database file named 'a' beside it; in
    one named '50%41', SQLAlchemy opened '50A' and MLflow failed deep inside: now one line, before anything runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a?b", "50%41"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        where = f"MLflow's SQLite store cannot be {tmp_path}/{name}/mlflow.db"
        with pytest.raises(KnnmixError, match=re.escape(where)):
            TR.Store.resolve()
    assert cli_main(["sweep", "smoke", "--out", str(tmp_path / "sweep")]) == 2  # refused before a trial runs
    assert "pass --tracking-uri sqlite:////another/folder/mlflow.db" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["50%41", "a?b"]  # nothing written
    monkeypatch.chdir(tmp_path)
    for uri in ("sqlite:///runs?1/mlflow.db", "sqlite:///runs%3F1/mlflow.db", f"sqlite:///{tmp_path}/50%2541/x.db"):
        with pytest.raises(KnnmixError, match="MLflow's SQLite store cannot be"):
            TR.Store.from_uri(uri)
    # a query stays the URI's; an escaped character is the path's
    assert TR.Store.from_uri("sqlite:///x.db?timeout=20") == TR.Store(
        f"sqlite:///{tmp_path}/x.db?timeout=20", str(tmp_path / "mlartifacts"))
    escaped = TR.Store.from_uri(f"sqlite:///{tmp_path}/h%23x/m.db")
    assert escaped == TR.Store(f"sqlite:///{tmp_path}/h#x/m.db", str(tmp_path / "h#x" / "mlartifacts"))


def test_resume_with_a_changed_space_file_names_what_changed(tmp_path):
    path = write_space(tmp_path)
    folder = SF.SweepFolder(tmp_path / "sweep")
    folder.root.mkdir()
    folder.file(SF.SPACE_FILE).write_text(SP.load_space(path).to_yaml())
    folder.file(SF.STATE_FILE).write_text(json.dumps({"space_label": path.name, "mlflow": {},
                                                      "tracking": {"uri": "sqlite:///m.db", "artifact_root": None}}))
    assert SF.resolve_space(folder, str(path), [], resume=True).trials == SP.load_space(path).trials
    with pytest.raises(KnnmixError, match=r"differs from the one sweep folder .* started with \(trials: \d+ -> 9\)"):
        SF.resolve_space(folder, str(path), ["sweep.trials=9"], resume=True)


def test_a_space_whose_bounds_start_at_zero_is_saved_whole_and_resumes(tmp_path):
    """Param.to_dict dropped a bound equal to False (low: 0, low: 0.0): the sweep folder's space.yaml lost it and
    --resume was one line, 'params.method.warmup_epochs: int needs low and high'."""
    params = {"method.warmup_epochs": {"type": "int", "low": 0, "high": 1},
              "optim.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.001}}
    space = SP.load_space(write_space(tmp_path, params=params, start_with=[]))
    assert {k: p.to_dict() for k, p in space.params.items()} == params
    folder = SF.SweepFolder(tmp_path / "sweep")
    folder.root.mkdir()
    folder.file(SF.SPACE_FILE).write_text(space.to_yaml())
    SF.write_state(folder, SF.new_state(space, TR.Store.from_uri(f"sqlite:///{tmp_path / 'runs.db'}")))
    assert SF.resolve_space(folder, None, [], resume=True).to_dict() == space.to_dict()


def test_resume_after_editing_the_sweep_folders_space_file_is_refused_in_one_line(tmp_path, capsys):
    """Tune restores the experiment as started: with trials raised in the folder's space.yaml, each --resume ran the
    old trials, then said 'sweep stopped (4 of 6 trials ended); continue it with ... --resume', never finishing."""
    space = SP.load_space(write_space(tmp_path))
    folder = SF.SweepFolder(tmp_path / "sweep")
    folder.root.mkdir()
    folder.file(SF.SPACE_FILE).write_text(space.to_yaml())
    SF.write_state(folder, SF.new_state(space, TR.Store.from_uri(f"sqlite:///{tmp_path / 'runs.db'}")))
    assert SF.resolve_space(folder, None, [], resume=True).to_dict() == space.to_dict()  # unedited: resumes
    saved = folder.file(SF.SPACE_FILE)
    saved.write_text(saved.read_text().replace("trials: 3", "trials: 5"))
    assert cli_main(["sweep", "--resume", "--out", str(folder.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("knnmix: error: ") and "\n" not in err, err
    assert "space.yaml' was edited after the sweep started (trials: 3 -> 5)" in err, err


def test_resuming_with_another_mlflow_tracking_uri_is_refused_as_with_tracking_uri(tmp_path, monkeypatch, capsys):
    """docs/sweeps.md: a changed store is refused on --resume; MLFLOW_TRACKING_URI pointing at another store was
    silently ignored (the sweep went on logging to the store it started with)."""
    space = SP.load_space(write_space(tmp_path))
    folder = SF.SweepFolder(tmp_path / "sweep")
    folder.root.mkdir()
    folder.file(SF.SPACE_FILE).write_text(space.to_yaml())
    (tmp_path / "file").write_text("")  # the saved store cannot answer: without the check the resume fails there
    SF.write_state(folder, SF.new_state(space, TR.Store.from_uri(f"sqlite:///{tmp_path / 'file' / 'm.db'}")))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    assert cli_main(["sweep", "--resume", "--out", str(folder.root)]) == 2
    err = capsys.readouterr().err
    assert f"tracking URI 'sqlite:///{tmp_path / 'other.db'}' (--tracking-uri or MLFLOW_TRACKING_URI) differs" in err


def test_resuming_a_moved_sweep_folder_is_one_line(tmp_path, capsys):
    """Tune's saved experiment names the sweep folder (the Optuna storage, the MLflow logger's run folders): a sweep
    folder moved, then resumed, ended in a 60-line sqlite3 'unable to open database file' traceback after Ray
    started."""
    space = SP.load_space(write_space(tmp_path))
    before, after = SF.SweepFolder(tmp_path / "sweep"), SF.SweepFolder(tmp_path / "moved")
    before.root.mkdir()
    before.file(SF.SPACE_FILE).write_text(space.to_yaml())
    SF.write_state(before, {**SF.new_state(space, TR.Store.from_uri(f"sqlite:///{tmp_path / 'm.db'}")),
                            "folder": str(before.root)})
    (tmp_path / "link").symlink_to(before.root)
    with pytest.raises(KnnmixError, match="differs from the store"):  # the same folder by another path: no move
        S.run_sweep(space, tmp_path / "link", resume=True, store=TR.Store.from_uri(f"sqlite:///{tmp_path}/x.db"))
    before.root.rename(after.root)
    assert cli_main(["sweep", "--resume", "--out", str(after.root)]) == 2
    assert capsys.readouterr().err == (f"knnmix: error: sweep folder {str(after.root)!r} was started as "
                                       f"{str(before.root)!r}, which its Tune experiment and Optuna studies name: "
                                       "move it back there to resume it\n")


def test_the_importance_plot_names_the_value_its_study_holds(tmp_path, monkeypatch):
    """The studies hold each trial's best epoch's val_acc (SettingsSearch); the plot's axis still said 'the last'."""
    from knnmix import plots

    labels: list[str] = []
    monkeypatch.setattr(plots, "save", lambda fig, path, **_: labels.append(fig.axes[0].get_xlabel()) or path)
    plots.plot_importances(tmp_path / "p.png", {"method.k": 0.7, "optim.lr": 0.3}, "t")
    assert labels == ["importance (fANOVA) for the best epoch's noisy-validation accuracy"]


def test_a_sweep_says_what_its_trials_warned_of_most_frequent_first_and_how_many_more(recwarn, capsys):
    summary = {"folder": "/s", "settings": [
        {"noise": "symmetric:0.8", "trials": 6,
         "warnings": {"a": 1, "noise symmetric:0.8: 9 of 10 classes b": 4, "c": 2, "d": 1, "e": 1}},
        {"noise": "symmetric:0.2", "trials": 6, "warnings": {}}]}
    said = ["noise symmetric:0.8: 4 of 6 trials: 9 of 10 classes b",  # (the noise once, not twice)
            "noise symmetric:0.8: 2 of 6 trials: c", "noise symmetric:0.8: 1 of 6 trials: a",
            "noise symmetric:0.8: 2 more warnings of its trials in /s/sweep_summary.json (settings: warnings)"]
    S.warn_of_trials(summary)
    assert [str(w.message) for w in recwarn.list if w.category is KnnmixWarning] == said
    with warnings.catch_warnings():  # python -W error: still lines, not an exception that loses the summary
        warnings.simplefilter("error")
        S.warn_of_trials(summary)
    assert capsys.readouterr().err.splitlines() == [f"knnmix: warning: {line}" for line in said]


def test_importances_say_how_many_finished_trials_they_come_from(tmp_path):
    """A 3-trial sweep's importances mean little: the count goes with them (the plot's title says it)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s/symmetric:0.5", storage=storage, direction="maximize")
    assert not SF.study_importances(storage, study.study_name)[0]  # no trial yet: none
    for k, state in ((1, "COMPLETE"), (2, "COMPLETE"), (3, "FAIL"), (4, "COMPLETE")):
        trial = study.ask({"method.k": optuna.distributions.IntDistribution(1, 8)})
        study.tell(trial, 40.0 + k if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    importances, counted = SF.study_importances(storage, study.study_name)
    assert set(importances) == {"method.k"} and counted == 3


def test_the_printed_optuna_command_survives_a_folder_with_spaces_and_a_hash(tmp_path):
    """The MLflow UI command was quoted, the Optuna one was not: '/runs/sp ü/sw #1' broke it at the space, and
    the shell dropped everything after '#'."""
    import shlex

    storage = SF.SweepFolder(tmp_path / "sp ü" / "sw #1").optuna_storage
    assert shlex.split(SF.optuna_command(storage)) == ["optuna-dashboard", storage]
    summary = {"name": "x", "commit": "c", "settings": [], "optuna_storage": storage,
               "mlflow": {"experiment": "e", "sweep_run_id": "r", "ui": "mlflow ui"}}
    assert f"Optuna: `{SF.optuna_command(storage)}`" in SF.summary_markdown(summary)


def test_the_studies_of_a_folder_with_a_question_mark_or_percent_go_to_its_own_database(tmp_path):
    """A '?' in the sweep folder's path started the SQLAlchemy URL's query: Optuna's studies went to a database
    named after the path's head ('/.../runs' for '/.../runs/what?/x'), or nowhere a resume would look."""
    import optuna

    folder = SF.SweepFolder(tmp_path / "what?" / "50%25 x")
    folder.root.mkdir(parents=True)
    optuna.create_study(study_name="s", storage=folder.optuna_storage)
    assert (folder.root / SF.OPTUNA_DB).is_file() and [p.name for p in tmp_path.iterdir()] == ["what?"]
    assert optuna.load_study(study_name="s", storage=folder.optuna_storage).study_name == "s"


def test_a_sweep_folder_or_run_folder_on_object_storage_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """pathlib reads 's3://bucket/x' as the local folder 's3:/bucket/x': distributed/sweep_job.py made it (and a
    sweep would have run in it), and `knnmix train` trained into it."""
    import importlib.util

    space = str(write_space(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("_sweep_job", REPO / "distributed" / "sweep_job.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    argv = [space, "--out", "s3://bucket/sweeps/x"]
    for run in (lambda: cli_main(["sweep", *argv]), lambda: job.main(argv)):
        assert run() == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("knnmix: error: --out 's3://bucket/sweeps/x': a sweep folder is a local"), err
    assert cli_main(["train", "--config", "digits", "--epochs", "1", "--out", "s3://bucket/run"]) == 2
    assert capsys.readouterr().err.strip() == ("knnmix: error: out: 's3://bucket/run' is a URI, but knnmix reads and "
                                               "writes it as a local (or mounted) path; only distributed.storage_path "
                                               "may be a URI (Ray Train uploads its checkpoints)")
    assert not (tmp_path / "s3:").exists()


def test_compare_logs_each_method_and_registers_it_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert cli_main(["compare", "--config", "digits", "--methods", "ce,mixup", "--epochs", "1", "--set",
                     "data.train_subset=300", "--out", str(tmp_path / "cmp"), "--tracking-uri", uri,
                     "--register", "digits"]) == 0
    runs = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    client = client_for(uri)
    for r in runs:  # comparison.json names each method's MLflow run; its model is a version of digits-<method>
        (version,) = client.search_model_versions(f"name='digits-{r['method']}'")
        assert r["registered_model"] == f"models:/digits-{r['method']}/{version.version}"
        assert version.run_id == r["mlflow_run_id"] and client.get_run(r["mlflow_run_id"]).data.params[
            "method.name"] == r["method"]


def test_a_store_that_does_not_answer_is_one_line_before_training_and_leaves_no_sweep(tmp_path, monkeypatch, capsys):
    """A tracking server that is down, a database file that is not one, a model name MLflow refuses: one line each
    before any training (not a traceback once it is done), and no half-made sweep for the next plain run."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's choice wins over knnmix's 3 retries
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "junk.db").write_text("not a database\n")
    cases = [(["--tracking-uri", down], f"tracking URI '{down}' does not answer: "),
             (["--tracking-uri", f"sqlite:///{tmp_path / 'junk.db'}"],
              f"tracking URI 'sqlite:///{tmp_path / 'junk.db'}' does not answer: (sqlite3.DatabaseError) file is not"),
             # a database without its driver installed answers nothing either, but not as a server that is down
             *([(["--tracking-uri", "postgresql://u:p@127.0.0.1:1/db"],
                 "tracking URI 'postgresql://u:p@127.0.0.1:1/db' needs the database driver 'psycopg', which is not "
                 "installed here (pip install 'psycopg[binary]')")] if importlib.util.find_spec("psycopg") is None
               else []),
             (["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--register", "bad/name"],
              "--register 'bad/name': Invalid model name 'bad/name'")]
    for extra, needle in cases:
        assert cli_main(["train", "--config", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"knnmix: error: {needle}") and "\n" not in err, err
        assert not (tmp_path / "run").exists()  # nothing trained
    for extra, needle in cases:
        assert cli_main(["sweep", str(write_space(tmp_path)), "--out", str(tmp_path / "sweep"), *extra]) == 2
        assert capsys.readouterr().err.strip().startswith(f"knnmix: error: {needle}")
        assert SF.check_state(SF.SweepFolder(tmp_path / "sweep"), resume=False) is None  # not "already holds a sweep"


def test_resuming_a_sweep_folder_that_does_not_exist_leaves_nothing_behind(tmp_path):
    with pytest.raises(KnnmixError, match="nothing to resume: .*sweep_state.json' does not exist"):
        S.run_sweep(SP.load_space(write_space(tmp_path)), tmp_path / "typo", resume=True, echo=None)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("content, reason", [
    ("{broken", r"Expecting property name"), (b"\xff\xfe\x00", r"codec can't decode"), ("{}", r"no 'tracking'"),
    ('{"tracking": {"uri": "x", "artifact_root": null}, "mlflow": {}}', r"no 'space_label'"),
    ("[1, 2]", r"list indices"), ('{"tracking": {"uri": 3, "artifact_root": null}, "mlflow": {}, "space_label": "s"}',
                                  r"a field of the wrong type"),
    ('{"tracking": {"uri": "x", "artifact_root": null}, "mlflow": {"settings": []}, "space_label": "s"}',
     r"a field of the wrong type"), ("dir", r"cannot read")])
def test_a_damaged_sweep_state_is_one_line_on_resume_and_still_refuses_a_new_sweep(tmp_path, capsys, content, reason):
    out = tmp_path / "sweep"
    out.mkdir()
    state = out / "sweep_state.json"
    if content == "dir":  # not damaged: unreadable (a folder here; no permission on shared storage)
        state.mkdir()
        assert cli_main(["sweep", "--resume", "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"knnmix: error: cannot read sweep state '{state}': Is a directory"
        return
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert cli_main(["sweep", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"knnmix: error: sweep state '.*sweep_state.json' is damaged \(.*{reason}.*\); knnmix "
                        r"writes it whole, so it was edited or the disk failed: restore it from a backup, or start "
                        r"the sweep in another --out", err), err
    assert cli_main(["sweep", str(write_space(tmp_path)), "--out", str(out)]) == 2  # not over a sweep's folder
    assert "already holds a sweep; pass --resume" in capsys.readouterr().err


def test_a_sweep_folder_in_use_is_refused_in_one_line(tmp_path, capsys):
    from knnmix.engine.checkpoint import folder_lock

    out = tmp_path / "sweep"
    with folder_lock(out, "sweep folder"):  # another sweep holds it
        assert cli_main(["sweep", str(write_space(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"knnmix: error: sweep folder '.*' is in use by pid \d+ on \S+ since .*", err), err
    assert not (out / "sweep_state.json").exists()


def test_after_sigterm_the_program_ends_at_once_when_its_ray_is_gone():
    """SIGTERM to a whole process group (timeout, kill -- -PGID, systemd, Slurm) stops Ray's own processes with the
    driver, which then waited 60 s for its GCS and ended with status 1 (Slurm sends SIGKILL after 30 s). The
    knnmix program's SIGTERM handler watches its private Ray's GCS port and ends the process with one line once
    nothing answers there; while something answers, the driver stops as Ctrl+C has it (here: it goes on)."""
    import signal

    script = """
import os, signal, socket, sys, time
from knnmix.scale import ray_env
ray_env.LEAVE_WITH_RAY = True  # what knnmix.cli.main sets for the program
gcs = socket.socket(); gcs.bind(("127.0.0.1", 0)); gcs.listen()
ray_env._LOCAL_GCS_PORT = gcs.getsockname()[1]  # what ensure_ray records when it starts a private Ray
ray_env.sigterm_as_interrupt()
ray_env.BEFORE_EXIT_S = 0.5  # a store that hangs holds the exit this long, then the next one runs
ray_env.BEFORE_EXIT += [lambda: time.sleep(60), lambda: print("runs marked", flush=True)]
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except KeyboardInterrupt:  # as Ctrl+C; Tune would now stop its trials through Ray
    time.sleep(1.5)
    print("still running while the GCS answers", flush=True)
    if sys.argv[1] == "gone":
        gcs.close()
    time.sleep(30)
"""
    for case, code, last in [("gone", 130, ray_env.RAY_GONE), ("up", -signal.SIGKILL, None)]:  # up: went on
        proc = subprocess.Popen([sys.executable, "-c", script, case], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            if case == "up":  # still running 2 s (four of the watchdog's polls) after the line, then killed
                assert select.select([proc.stdout], [], [], 30)[0], "no line in 30 s"
                first = proc.stdout.readline()
                time.sleep(2)
                proc.kill()
            out, err = proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if case == "up":
            out = first + out
        assert "still running while the GCS answers" in out, err
        assert proc.returncode == code, err
        assert ("runs marked" in out) == (case == "gone"), out  # what a sweep registers runs before the exit
        if last:
            assert err.strip().splitlines()[-1] == last, err


def test_a_sweep_registers_the_marking_of_its_runs_killed_for_the_sigterm_exit(tmp_path):
    """The watchdog above ends the process without unwinding the sweep: the sweep's MLflow runs stayed RUNNING
    until --resume. While a sweep runs, ended_on_failure registers the KILLED marking with the watchdog."""
    store = TR.Store.from_uri(f"sqlite:///{tmp_path / 'm.db'}")
    client = store.client()
    exp = client.create_experiment("e")
    sweep, setting, done = (client.create_run(exp).info.run_id for _ in range(3))
    trial = client.create_run(exp, tags={TR.PARENT_TAG: setting}).info.run_id
    client.set_terminated(done)
    ml = {"experiment_id": exp, "sweep_run_id": sweep, "settings": {"symmetric-0.5": setting}}
    with T.ended_on_failure(store, ml):
        (killed,) = ray_env.BEFORE_EXIT
        killed()  # what the watchdog runs before os._exit
        assert {r: client.get_run(r).info.status for r in (sweep, setting, trial, done)} == {
            sweep: "KILLED", setting: "KILLED", trial: "KILLED", done: "FINISHED"}
    assert ray_env.BEFORE_EXIT == []  # the sweep ended: nothing left to mark


def test_resuming_a_finished_sweep_leaves_its_mlflow_runs_finished_and_logs_no_total_twice(tmp_path):
    """--resume on a finished sweep (e.g. to --register its models) set its noise settings' runs RUNNING again
    (open_sweep_runs reuses them) and left them so for good, and logged the sweep run's totals a second time."""
    space = SP.load_space(write_space(tmp_path))
    store = TR.Store.from_uri(f"sqlite:///{tmp_path / 'm.db'}")
    (tmp_path / "space.yaml").write_text(space.to_yaml())
    ml: dict = {}
    summary = {"failed": 0, "settings": [{"noise": s.spec, "slug": s.slug, "best": {"val_acc": 50.0 + i,
                                                                                    "test_acc": 60.0}}
                                         for i, s in enumerate(space.settings)]}
    for _ in range(2):  # the sweep, then --resume of the finished sweep
        experiment_id = TR.reach(store, space.experiment_name)
        T.open_sweep_runs(store, space, space.settings, ml, tmp_path / "space.yaml", experiment_id)
        for s, entry in zip(space.settings, summary["settings"]):
            entry.update(trials=0, completed=0, stopped_early=0, failed=0, study=SF.study_name(space, s))
            T.finish_setting_run(store, ml, s, entry, [], None, tmp_path / "plots", "sqlite:///:memory:", None)
        T.finish_sweep_run(store, ml, summary, [], tmp_path / "plots", "t")
    client = store.client()
    runs = [ml["sweep_run_id"], *ml["settings"].values()]
    assert [client.get_run(r).info.status for r in runs] == ["FINISHED"] * 3
    assert len(client.get_metric_history(ml["sweep_run_id"], "best_val_acc.symmetric-0.2")) == 1


def test_a_ray_temp_dir_too_long_for_its_sockets_is_one_line(tmp_path):
    """A long RAY_TMPDIR (Ray's Unix socket paths may have 107 bytes) was a 30-line OSError traceback."""
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / ("x" * 90))}
    env.pop("RAY_ADDRESS", None)
    args = ["sweep", str(write_space(tmp_path, noise=["symmetric:0.2"])), "--out", str(tmp_path / "sweep"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'runs.db'}"]
    done = subprocess.run([sys.executable, "-m", "knnmix.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("knnmix: error: RAY_TMPDIR="), done.stderr[-3000:]
    assert "is too long for Ray" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


# The tests from here to the end-to-end sweep's share the local Ray, which stops after that sweep: the tests
# before and after it run with no Ray idling beside them.
@pytest.mark.parametrize("resources, needle", [
    ({"distributed.workers": 2, "distributed.cpus_per_worker": 2}, "needs 4 CPUs but this machine has 2"),
    ({"distributed.workers": 0, "distributed.use_gpu": True}, "needs 1 GPUs but this machine has 0"),
])
def test_trials_this_machine_cannot_hold_are_one_line_before_any_trial(sweep_ray, tmp_path, resources, needle):
    """Ray Train trials too big for this machine failed one after another (a search_spaces/cifar10.yaml sweep on a
    2-core laptop: 120 identical failures); an in-process trial asking for a missing GPU waited forever."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is there")
    space = SP.load_space(write_space(tmp_path, base={"config": "digits", "set": {**BASE_SET, **resources}}))
    store = TR.Store.from_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(KnnmixError, match=needle):
        S.run_sweep(space, tmp_path / "sweep", store=store, echo=None)
    assert SF.check_state(SF.SweepFolder(tmp_path / "sweep"), resume=False) is None  # nothing to --resume
    assert not list((tmp_path / "sweep").glob("*/trials")) and not (tmp_path / "sweep" / SF.SPACE_FILE).exists()
    # no MLflow run either (the sweep's and its settings' runs were made before the check, and each try left 3)
    client = store.client()
    assert client.search_runs([client.get_experiment_by_name(space.experiment_name).experiment_id]) == []


def test_a_sweep_starts_its_local_ray_with_a_dashboard_only_for_ray_train_trials(tmp_path, monkeypatch):
    """Ray Train's placement-group cleaner asks the dashboard's state API whether a run's controller lives; trials
    in their Tune trial's process do without its modules (~1.7 CPU-seconds a start and stop, and their polling), unless
    --verbose. (The Ray a sweep of in-process trials really starts: test_sweep_recovery.py.)"""
    from knnmix.scale import ray_env

    asked = []

    def stop_here(**init):
        asked.append(init["dashboard"])
        raise KnnmixError("stop here")

    monkeypatch.setattr(ray_env, "ensure_ray", stop_here)
    store = TR.Store.from_uri(f"sqlite:///{tmp_path / 'm.db'}")
    for workers, verbose in ((0, False), (1, False), (2, False), (0, True)):
        base = {"config": "digits", "set": {**BASE_SET, "distributed.workers": workers}}
        space = SP.load_space(write_space(tmp_path, f"w{workers}.yaml", base=base))
        with pytest.raises(KnnmixError, match="stop here"):
            S.run_sweep(space, tmp_path / f"sweep-{workers}-{verbose}", store=store, echo=None, verbose=verbose)
    assert asked == [False, False, True, True]


def test_sigterm_stops_a_ray_driver_as_ctrl_c_does(sweep_ray):
    """Ray's crash handler took SIGTERM from ray.init: a sweep driver stopped by kill / timeout / a batch system
    printed a native stack dump and aborted (status 134) instead of saving its state and naming --resume."""
    import signal

    from knnmix.scale import ray_env

    ray_env.ensure_ray()  # already connected: the handler is the one ensure_ray installed when it started Ray
    assert signal.getsignal(signal.SIGTERM) is ray_env._on_sigterm
    with pytest.raises(KeyboardInterrupt):  # what Tune's SIGINT handler (during a sweep) or Python's gets
        signal.raise_signal(signal.SIGTERM)
        time.sleep(1)


def test_a_sweeps_ray_without_the_dashboard_listens_on_loopback_only_too(sweep_ray):
    """The Ray a sweep of in-process trials starts (no dashboard modules: its minimal dashboard and agents still run)
    is as private as the one with them (test_ray_train.py)."""
    assert not any(x.startswith("ray-dashboard-") for x in descendants())
    listening = listening_addresses()
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in listening), listening


# ----------------------------------------------------------------------------------------------------------------
# End to end: 2 noise rates x 3 in-process trials on digits


@pytest.fixture(scope="module")
def e2e(ray_session, tmp_path_factory):
    import ray

    ray_session["start"](dashboard=False)  # as `knnmix sweep` starts it for in-process trials
    tmp = tmp_path_factory.mktemp("e2e")
    space = write_space(tmp)
    uri = f"sqlite:///{tmp / 'store' / 'runs.db'}"
    out = tmp / "sweep"
    buf = io.StringIO()
    t0, sigint = time.perf_counter(), signal.getsignal(signal.SIGINT)
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["sweep", str(space), "--out", str(out), "--tracking-uri", uri, "--register", "knnmix-e2e"])
    elapsed, sigint_kept = time.perf_counter() - t0, signal.getsignal(signal.SIGINT) is sigint
    print(f"e2e sweep: {elapsed:.0f}s")
    ray.shutdown()  # the tests below read its files, MLflow and Optuna: no Ray idling beside them
    return SimpleNamespace(rc=rc, out=out, uri=uri, text=buf.getvalue(), tmp=tmp, elapsed=elapsed,
                           sigint_kept=sigint_kept, summary=json.loads((out / "sweep_summary.json").read_text()))


@pytest.mark.slow
def test_sweep_completes_with_early_stopping_and_a_summary(e2e):
    assert e2e.rc == 0, e2e.text[-3000:]
    assert e2e.sigint_kept  # Tune's Ctrl+C handler, which swallows the next Ctrl+C (or SIGTERM) once Tune's run has
    # ended (a warning that quiet logging hides), is gone: Ctrl+C stops the program while it logs to MLflow
    s = e2e.summary
    assert [x["noise"] for x in s["settings"]] == ["symmetric:0.2", "symmetric:0.5"]
    for x in s["settings"]:
        assert x["trials"] == 3 and x["failed"] == 0
        assert x["completed"] + x["stopped_early"] == 3
        assert x["stopped_early"] >= 1  # the lr=1e-5 start point, at the first rung
        best = x["best"]
        assert set(best["params"]) == set(PARAMS) and best["completed"]
        folder = Path(best["run_folder"])
        assert json.loads((folder / "summary.json").read_text())["best_val"]["val_acc"] == best["val_acc"]
        assert json.loads((folder / "summary.json").read_text())["final"]["test_acc"] == best["last_test_acc"]
        others = [json.loads((p / "summary.json").read_text())["best_val"]["val_acc"]
                  for p in folder.parent.iterdir() if (p / "summary.json").exists()]
        assert best["val_acc"] == max(others)
        assert best["params"]["optim.lr"] > 1e-4
        # every trial records the driver's commit and command, though it imports the package copy Ray ships
        # (py_modules) and runs Ray's worker command line
        info = json.loads((folder / "run.json").read_text())
        assert info["commit"] == git_commit() != "unknown" and info["command"] == command()
    assert s["trials"] == 6 and s["stopped_early"] >= 2 and s["failed"] == 0 and s["commit"] == git_commit()
    # the terminal: one line per trial, the table, the commands that open the stores, the JSON line last
    store = TR.Store.from_uri(e2e.uri)
    lines = e2e.text.strip().splitlines()
    assert sum(ln.startswith("  trial ") for ln in lines) == 6
    assert "| noise | trials | stopped early | failed | best val acc (%) | its test acc (%) |" in e2e.text
    assert f"MLflow UI: {store.ui_command()}" in e2e.text
    assert "#/experiments/" in e2e.text and "/runs?workflowType=machine_learning" in e2e.text  # the training view
    assert f"optuna-dashboard sqlite:///{e2e.out / 'optuna.db'}" in e2e.text
    assert json.loads(lines[-1])["best"]["symmetric:0.5"]["val_acc"] == s["settings"][1]["best"]["val_acc"]
    assert "INFO" not in e2e.text and "Trial status" not in e2e.text  # Ray's, Tune's, faiss's chatter is off
    md = (e2e.out / "sweep_summary.md").read_text()
    assert "symmetric:0.5" in md and s["settings"][1]["best"]["trial_id"] in md
    state = json.loads((e2e.out / "sweep_state.json").read_text())
    assert state["status"] == "done" and state["tracking"]["uri"] == store.uri
    assert set(state["mlflow"]["settings"]) == {"symmetric-0.2", "symmetric-0.5"}


@pytest.mark.slow
def test_settings_run_side_by_side_on_the_two_cpus(e2e):
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(e2e.out / "tune")).trials
    spans = {t.trial_id: (t.run_metadata.start_time or 0, t.run_metadata.last_result_time or 0) for t in trials}
    by = {t.trial_id: t.config[S.SETTING_KEY] for t in trials}
    overlap = [(a, b) for a in spans for b in spans if by[a] != by[b]
               and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]
    assert overlap, spans


@pytest.mark.slow
def test_noise_settings_reach_their_trials(e2e):
    import numpy as np

    for x in e2e.summary["settings"]:
        folders = [e2e.out / x["slug"] / "trials" / t for t in x["trial_ids"]]
        assert len(folders) == 3
        for f in folders:
            cfg = C.load(f / "config.yaml")
            assert cfg.noise.spec == x["noise"] and cfg.threads == 1
            with np.load(f / "noisy_labels.npz") as z:
                assert str(z["spec"]) == x["noise"]
                rate = float(np.mean(z["noisy_labels"] != z["true_labels"]))
            assert abs(rate - float(x["noise"].split(":")[1])) < 0.01


@pytest.mark.slow
def test_optuna_storage_holds_every_study(e2e):
    import optuna

    storage = f"sqlite:///{e2e.out / 'optuna.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["e2e/symmetric:0.2", "e2e/symmetric:0.5"]
    for x in e2e.summary["settings"]:
        study = optuna.load_study(study_name=x["study"], storage=storage)
        assert len(study.trials) == 3 and set(study.trials[0].params) == set(PARAMS)
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
        # each trial's value is its best epoch's, what the sweep selects on (not its last epoch's)
        folders = [e2e.out / x["slug"] / "trials" / tid for tid in x["trial_ids"]]
        bests = [max(r["val_acc"] for r in read_metrics(f / "metrics.jsonl")) for f in folders]
        assert sorted(t.value for t in study.trials) == pytest.approx(sorted(bests))
        assert study.best_value == pytest.approx(x["best"]["val_acc"])


@pytest.mark.slow
def test_mlflow_holds_nested_runs_params_metrics_and_artifacts(e2e, monkeypatch):
    import mlflow
    import mlflow.artifacts
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", e2e.uri)  # put back after the test: set_tracking_uri exports it
    mlflow.set_tracking_uri(e2e.uri)  # models:/ URIs resolve through the tracking store
    client = client_for(e2e.uri)
    runs = runs_by_kind(e2e.uri, "knnmix-sweep-e2e")
    assert len(runs["sweep"]) == 1 and len(runs["noise_setting"]) == 2 and len(runs["trial"]) == 6
    sweep = runs["sweep"][0]
    settings = {r.info.run_id: r for r in runs["noise_setting"]}
    assert all(r.data.tags[TR.PARENT_TAG] == sweep.info.run_id for r in settings.values())
    assert sorted(r.info.run_name for r in settings.values()) == ["symmetric:0.2", "symmetric:0.5"]
    assert all(r.info.status == "FINISHED" for r in runs["sweep"] + runs["noise_setting"])
    for r in runs["sweep"] + runs["noise_setting"] + runs["trial"]:  # MLflow's own source and user tags, the commit
        assert r.data.tags["mlflow.source.type"] == "LOCAL" and r.data.tags["mlflow.user"]
        assert r.data.tags["mlflow.source.git.commit"] == git_commit().removesuffix("-dirty")
    arts = {a.path for a in client.list_artifacts(sweep.info.run_id)} | {
        a.path for a in client.list_artifacts(sweep.info.run_id, "plots")}
    assert {"space.yaml", "sweep_summary.json", "sweep_summary.md", "plots/best_per_noise.png"} <= arts
    assert sweep.data.params["trials"] == "3" and sweep.data.params["params.method.k"] == "int in [1, 3]"
    assert sweep.data.metrics["best_val_acc.symmetric-0.2"] == e2e.summary["settings"][0]["best"]["val_acc"]

    by_trial = {r.data.tags[T.TRIAL_TAG]: r for r in runs["trial"]}
    for x in e2e.summary["settings"]:
        setting = settings[x["mlflow_run_id"]]
        children = [r for r in runs["trial"] if r.data.tags[TR.PARENT_TAG] == setting.info.run_id]
        assert sorted(r.data.tags[T.TRIAL_TAG] for r in children) == sorted(x["trial_ids"])
        outcomes = [r.data.tags[T.OUTCOME_TAG] for r in children]
        assert outcomes.count("stopped_early") == x["stopped_early"] and "failed" not in outcomes
        for r in children:
            folder = e2e.out / x["slug"] / "trials" / r.data.tags[T.TRIAL_TAG]
            cfg = C.load(folder / "config.yaml")
            # a descriptive name: the noise setting and the sampled values
            assert r.info.run_name.startswith(f"{x['noise']} k={cfg.method.k} temperature=")
            p = r.data.params  # the resolved config, flattened, and the sampled values
            assert p["noise.spec"] == x["noise"] and p["model.name"] == "small_cnn" and p["epochs"] == "5"
            assert p["method.k"] == str(cfg.method.k) == p["sampled.method.k"]
            assert float(p["optim.lr"]) == cfg.optim.lr == float(p["sampled.optim.lr"])
            assert set(p) >= {f"sampled.{k}" for k in PARAMS} | set(C.flatten(cfg))
            hist = client.get_metric_history(r.info.run_id, "val_acc")  # step = epoch, equal to the run folder's
            epochs = [int(m.step) for m in sorted(hist, key=lambda m: m.step)]
            assert epochs == list(range(1, len(epochs) + 1))
            want = {rec["epoch"]: rec["val_acc"] for rec in read_metrics(folder / "metrics.jsonl")}
            assert all(m.value == pytest.approx(want[int(m.step)]) for m in hist)
            assert len(epochs) == (5 if r.data.tags[T.OUTCOME_TAG] == "completed" else len(epochs)) >= 2
            assert "config.yaml" in {a.path for a in client.list_artifacts(r.info.run_id)}
            (ds,) = client.get_run(r.info.run_id).inputs.dataset_inputs  # the runs table's Dataset column
            assert ds.dataset.name == f"digits [{x['noise']}]"
        stopped = [r for r in children if r.data.tags[T.OUTCOME_TAG] == "stopped_early"]
        assert all(len(client.get_metric_history(r.info.run_id, "val_acc")) < 5 for r in stopped)
        # the setting's run: the best trial's label issues, the plots, importances from its Optuna study
        arts = {a.path for a in client.list_artifacts(setting.info.run_id, "best_trial")} | {
            a.path for a in client.list_artifacts(setting.info.run_id, "plots")}
        assert {"best_trial/label_issues.csv", "best_trial/config.yaml", "plots/learning_curves.png",
                "plots/clean_prob_histogram.png", "plots/param_importances.png"} <= arts
        assert set(x["importances"]) == set(PARAMS)
        # the model: logged on the best trial's own run, registered, with a signature; no dataset reloaded
        best_run = by_trial[x["best"]["trial_id"]]
        assert best_run.info.run_id == x["best"]["mlflow_run_id"] and best_run.data.tags["knnmix.best"] == "true"
        assert x["model_uri"].startswith("models:/")
        info = mlflow.models.get_model_info(x["model_uri"])
        assert info.run_id == best_run.info.run_id
        assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 8, 8)
        model = mlflow.pytorch.load_model(x["model_uri"])
        best = safe_load(Path(x["best"]["run_folder"]) / "model_best.pt")
        assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in best["state_dict"].items())
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
        assert setting.data.metrics["best_val_acc"] == x["best"]["val_acc"]
        assert setting.data.metrics["stopped_early"] == x["stopped_early"]
    versions = client.search_model_versions("name='knnmix-e2e'")
    assert len(versions) == 2  # --register: one version per noise setting's best model, tagged with the setting
    said = {x["noise"]: x["best"]["registered_model"] for x in e2e.summary["settings"]}  # and named in the summary
    assert said == {v.tags["knnmix.noise_spec"]: f"models:/knnmix-e2e/{v.version}" for v in versions}
    assert all(f"registered: {noise}: {uri}" in e2e.text for noise, uri in said.items())
    assert json.loads(e2e.text.strip().splitlines()[-1])["best"]["symmetric:0.2"]["registered_model"] == said[
        "symmetric:0.2"]


@pytest.mark.slow
def test_mlflow_server_serves_the_sweep_over_rest(e2e):
    import psutil  # Ray's vendored copy, on sys.path once ray is imported

    store = TR.Store.from_uri(e2e.uri)
    port = free_port()
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
        kinds = [t.get(TR.KIND_TAG) for t in tags]
        assert kinds.count("sweep") == 1 and kinds.count("noise_setting") == 2 and kinds.count("trial") == 6
        sweep_id = next(run["info"]["run_id"] for run, t in zip(found, tags) if t[TR.KIND_TAG] == "sweep")
        setting_ids = {run["info"]["run_id"] for run, t in zip(found, tags) if t[TR.KIND_TAG] == "noise_setting"}
        assert all(t[TR.PARENT_TAG] == sweep_id for t in tags if t[TR.KIND_TAG] == "noise_setting")
        assert all(t[TR.PARENT_TAG] in setting_ids for t in tags if t[TR.KIND_TAG] == "trial")
        trial_id = next(run["info"]["run_id"] for run, t in zip(found, tags) if t[TR.KIND_TAG] == "trial")
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
# knnmix train logs a run when a tracking URI is given


def test_a_runs_epochs_are_placed_at_the_times_they_ended():
    """From run.json (its start, each resume) and the epochs' training and evaluation times; a restart that went
    back (a redo after an unreadable checkpoint) replaces the later starts; without a start, no times at all."""
    def ms(text: str) -> int:
        return int(1000 * datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp())

    records = [{"epoch": e, "train_time_s": 10.0, "eval_time_s": 0.5} for e in (1, 2, 3, 4)]
    info = {"started": "2026-12-04T10:00:00+0000", "resumed": [
        {"after_epoch": 3, "at": "2026-12-04T11:00:00+0000"}, {"after_epoch": 1, "at": "2026-12-04T12:00:00+0000"}]}
    ends = TR.epoch_ends(info, records)
    assert ends[0] == ms(info["started"]) and ends[1] == ms(info["started"]) + 10_500
    assert [ends[e] - ms("2026-12-04T12:00:00+0000") for e in (2, 3, 4)] == [10_500, 21_000, 31_500]
    assert TR.epoch_ends({"resumed": info["resumed"]}, records) == {}


def test_train_logs_its_run_to_mlflow_when_a_tracking_uri_is_given(tmp_path, monkeypatch, capsys):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["train", "--config", "digits", "--epochs", "6", "--method", "ce", "--noise", "none",
            "--set", "data.train_subset=400"]  # clean labels: a model that has learned, to serve below
    assert cli_main([*argv, "--out", str(tmp_path / "quiet")]) == 0
    assert "mlflow_run_id" not in capsys.readouterr().out  # no URI: nothing is logged
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert cli_main([*argv, "--out", str(tmp_path / "run"), "--tracking-uri", uri, "--register", "digits-ce"]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out.strip().splitlines()[-1])
    assert "registered model" not in printed.err + printed.out  # MLflow's own prints: quiet, as its logging
    run_id = summary["mlflow_run_id"]
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model must not leave its store as the default
    client = client_for(uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "knnmix-train"
    assert run.info.run_name == "ce digits none seed 0" and run.data.tags[TR.KIND_TAG] == "train"
    assert run.data.params["method.name"] == "ce" and run.data.params["epochs"] == "6"
    assert [int(m.step) for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3, 4, 5, 6]
    assert {"summary.json", "label_issues.csv", "config.yaml"} <= {a.path for a in client.list_artifacts(run_id)}
    assert run.inputs.dataset_inputs[0].dataset.name == "digits [none]"
    mlflow.set_tracking_uri(uri)
    (version,) = client.search_model_versions("name='digits-ce'")
    assert version.run_id == run_id
    assert summary["registered_model"] == f"models:/digits-ce/{version.version}"  # printed, and tagged: its noise
    assert version.tags == {"knnmix.noise_spec": "none"}
    # the served model takes pixels in [0, 1] and normalises them itself: it scores the run's own test split
    served = mlflow.pytorch.load_model(f"models:/digits-ce/{version.version}")
    test = load_dataset("digits")
    with torch.no_grad():
        hits = served(test.test.images.float() / 255).argmax(1).numpy() == test.test_labels
    assert summary["best_val"]["test_acc"] > 50 and 100 * hits.mean() == pytest.approx(
        summary["best_val"]["test_acc"], abs=0.3)  # one of 360 images
    with pytest.raises(Exception, match=r"images must be \(N, 1, 8, 8\)"):
        served(torch.rand(2, 1, 28, 28))  # another size is refused, not answered
    info = mlflow.models.get_model_info(f"models:/digits-ce/{version.version}")
    assert info.metadata["classes"] == [str(c) for c in range(10)] and len(info.metadata["mean"]) == 1
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/digits-ce/{version.version}")
    assert {"torch", "torchvision", "numpy"} <= {line.split("==")[0] for line in Path(requirements).read_text().split()}
    # resuming the run folder continues its MLflow run: no second run, epoch or model version, also once the folder
    # has moved (it was a second run of the same 8 epochs)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")  # ... but a copy is a run of its own
    for more in ([], ["--epochs", "8"]):
        if more:
            (tmp_path / "run").rename(tmp_path / "moved")
            # the copy, resumed while its original is no longer where it was logged from: still not that run
            assert cli_main(["train", "--out", str(tmp_path / "copy"), "--resume", "--tracking-uri", uri]) == 0
            copied = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mlflow_run_id"]
            assert copied != run_id and len(client.get_metric_history(copied, "val_acc")) == 6
            client.delete_run(copied)
        out = tmp_path / ("moved" if more else "run")
        assert cli_main(["train", "--out", str(out), "--resume", "--tracking-uri", uri, *more]) == 0
        resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert resumed["mlflow_run_id"] == run_id
    assert [int(m.step) for m in client.get_metric_history(run_id, "val_acc")] == list(range(1, 9))
    assert client.get_run(run_id).data.tags["knnmix.run_folder"] == str(tmp_path / "moved")
    with monkeypatch.context() as m:  # the same path on another host (a RayJob's next head node): the same run
        m.setattr(socket, "gethostname", lambda: "the-next-head-node")
        assert cli_main(["train", "--out", str(tmp_path / "moved"), "--resume", "--tracking-uri", uri]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mlflow_run_id"] == run_id
    # MLflow's params cannot change: the run says which the resume changed; its totals are metrics, as a trial's
    run = client.get_run(run_id)
    assert run.data.params["epochs"] == "6" and run.data.tags["knnmix.changed_on_resume"] == (
        f"epochs: 6 -> 8; out: {tmp_path / 'run'} -> {tmp_path / 'moved'}")
    assert (run.data.metrics["best_val_acc"], run.data.metrics["test_acc_at_best_val"]) == (
        resumed["best_val"]["val_acc"], resumed["best_val"]["test_acc"])
    # ... and its times are the training's: it starts when the run folder started (it was logged only after the
    # training: a 30 s run showed 1.2 s in the Duration column), each epoch at the time it ended
    info = json.loads((tmp_path / "moved" / "run.json").read_text())
    started = datetime.strptime(info["started"], "%Y-%m-%dT%H:%M:%S%z")
    times = [m.timestamp for m in client.get_metric_history(run_id, "val_acc")]
    assert run.info.start_time == 1000 * started.timestamp() < times[0]
    assert times == sorted(times) and times[-1] <= run.info.end_time and len(set(times)) > 1
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert len(client.search_model_versions("name='digits-ce'")) == 1
    # logging that fails once the run is trained (here: its artifact folder cannot be made) says so, and then
    # --resume logs it without training again (the error was "'.../mlartifacts/...': Not a directory", nothing more)
    artifacts = tmp_path / "mlartifacts" / "knnmix-train"
    artifacts.rename(tmp_path / "kept")
    artifacts.write_text("")
    assert cli_main([*argv, "--epochs", "2", "--out", str(tmp_path / "late"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"knnmix: error: the run in '{tmp_path / 'late'}' is trained, but logging it to MLflow "
                          "failed: [Errno 20] Not a directory") and err.endswith(
        "; once that is mended, the same command with --resume logs it (and trains nothing again)"), err
    artifacts.unlink()
    (tmp_path / "kept").rename(artifacts)
    assert cli_main(["train", "--out", str(tmp_path / "late"), "--resume", "--tracking-uri", uri]) == 0
    late = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mlflow_run_id"]
    assert client.get_run(late).info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 2
    assert [int(m.step) for m in client.get_metric_history(late, "val_acc")] == [1, 2]
    # MLflow's own variable does the same
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli_main([*argv, "--out", str(tmp_path / "env")]) == 0
    assert len(client.search_runs([run.info.experiment_id])) == 3  # another run folder: another run


def test_a_single_process_run_logs_to_mlflow_without_importing_ray(tmp_path):
    """``knnmix train --tracking-uri`` with no workers is plain torch and MLflow: Ray is never imported, nor
    matplotlib (~0.5 CPU-s in every fresh process: label_issues.png is drawn with Pillow)."""
    code = (
        "import sys\nfrom knnmix.cli import main\n"
        f"rc = main(['train', '--config', 'digits', '--epochs', '1', '--method', 'ce', '--set', "
        f"'data.train_subset=200', '--out', {str(tmp_path / 'run')!r}, '--tracking-uri', "
        f"'sqlite:///{tmp_path / 'm.db'}'])\n"
        "print('RAY', sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'matplotlib'))[:3], rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "RAY [] 0"
    assert '"mlflow_run_id"' in done.stdout
