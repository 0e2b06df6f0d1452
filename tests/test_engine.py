"""The engine end to end on real (small) data: run folder, resume, label audit, and knnmix vs cross-entropy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from knnmix import config as C
from knnmix.engine.loop import Engine, train
from knnmix.engine.outputs import RunFolder, read_metrics
from knnmix.errors import ConfigError, KnnmixError


def digits_cfg(tmp_path, **dotted):
    """The embedded digits preset, shortened."""
    from knnmix.cli import preset_path

    base = C.load(preset_path("digits"))
    defaults = {"epochs": 4, "out": str(tmp_path / "run"), "threads": 2, "log_every": 100}
    defaults.update(dotted)
    if defaults["epochs"] is None:  # the preset's own length
        defaults["epochs"] = base.epochs
    return C.replace(base, **defaults)


class Stop(Exception):
    pass


def stop_after(epoch):
    def cb(engine, record):
        if record["epoch"] == epoch:
            raise Stop

    return cb


def test_run_folder_holds_every_output(tmp_path):
    cfg = digits_cfg(tmp_path, **{"method.warmup_epochs": 1, "method.correction_start": 3,
                                  "method.correction_period": 1})
    summary = train(cfg, echo=None)
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "noisy_labels.npz", "metrics.jsonl", "checkpoint.pt",
                 "model_best.pt", "summary.json", "label_issues.csv"):
        assert (run / name).exists(), name
    # resolved config: automatic choices are filled in
    saved = C.load(run / "config.yaml")
    assert saved.model.name == "small_cnn" and saved.noise.seed == cfg.seed
    # one metrics line per epoch with the diagnostics that need true labels
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert [m["phase"] for m in metrics] == ["ce", "mixup", "knn", "knn"]
    for key in ("train_loss", "val_acc", "test_acc", "label_acc", "lr", "train_time_s"):
        assert all(m[key] is not None for m in metrics), key
    assert "noisy_precision" in metrics[-1] and "noisy_recall" in metrics[-1]
    # the summary reports last-epoch and validation-selected figures, with the commit and config
    s = json.loads((run / "summary.json").read_text())
    assert s["final"]["test_acc"] == metrics[-1]["test_acc"]
    best = max(metrics, key=lambda m: m["val_acc"])
    assert s["best_val"]["epoch"] == best["epoch"] and s["best_val"]["test_acc"] == best["test_acc"]
    assert s["commit"] and s["config"]["method"]["name"] == "knnmix"
    assert summary["final"] == s["final"]
    # the noisy labels are saved so the run can be re-scored
    rec = np.load(run / "noisy_labels.npz")
    rescored = np.mean(rec["noisy_labels"] != rec["true_labels"])
    assert rescored == pytest.approx(s["noise_rate"])
    assert len(rec["train_rows"]) == s["train_size"] and len(rec["val_rows"]) == s["val_size"]
    assert not set(rec["train_rows"]) & set(rec["val_rows"])
    # label issues: ranked, one row per training sample, columns for the annotators
    with open(run / "label_issues.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == s["train_size"]
    for col in ("index", "given_label", "corrected_label", "clean_prob", "is_label_issue", "true_label"):
        assert col in rows[0]
    probs = [float(r["clean_prob"]) for r in rows]
    assert probs == sorted(probs)
    given = rec["noisy_labels"][[int(r["row"]) for r in rows]]
    assert [int(r["given_label"]) for r in rows] == given.tolist()
    # the checkpoint resumes the method, not just the weights
    ck = RunFolder(run).load_checkpoint()
    for key in ("model", "optimizer", "scheduler", "epoch", "config", "state", "rng", "history"):
        assert key in ck
    assert set(ck["state"]) == {"targets", "clean_prob", "loss_history", "neighbours"}
    assert (ck["state"]["neighbours"] >= 0).all()


def test_resume_continues_exactly(tmp_path):
    dotted = {"epochs": 5, "method.warmup_epochs": 1, "method.correction_start": 3, "method.correction_period": 1}
    full_cfg = digits_cfg(tmp_path, **dotted, out=str(tmp_path / "full"))
    train(full_cfg, echo=None)

    cut_cfg = digits_cfg(tmp_path, **dotted, out=str(tmp_path / "cut"))
    engine = Engine(cut_cfg, folder=RunFolder(cut_cfg.out), echo=None)
    engine.start_outputs()
    with pytest.raises(Stop):
        engine.fit(callbacks=[stop_after(3)])
    train(cut_cfg, resume=True, echo=None)

    def strip(ms):
        return [{k: v for k, v in m.items() if not k.endswith("_time_s")} for m in ms]

    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    cut = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert strip(cut) == strip(full)
    a = RunFolder(tmp_path / "full").load_checkpoint()
    b = RunFolder(tmp_path / "cut").load_checkpoint()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["state"]:
        assert torch.equal(torch.nan_to_num(a["state"][key]), torch.nan_to_num(b["state"][key])), key


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    train(cfg, echo=None)
    with pytest.raises(KnnmixError, match="already holds a run"):
        train(cfg, echo=None)
    with pytest.raises(KnnmixError, match="nothing to resume"):
        train(C.replace(cfg, out=str(tmp_path / "empty")), resume=True, echo=None)
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(C.replace(cfg, seed=1), overwrite=True, echo=None)  # replaces the run's files, keeps the user's
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["seed"] == 1
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 1
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_different_method_config(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    train(cfg, echo=None)
    with pytest.raises(ConfigError, match="method.k"):
        train(C.replace(cfg, **{"method.k": 3, "epochs": 2}), resume=True, echo=None)
    train(C.replace(cfg, epochs=2), resume=True, echo=None)  # more epochs is allowed
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2


@pytest.mark.parametrize("method", ["ce", "mixup", "selc"])
def test_baselines_run_on_the_same_engine(tmp_path, method):
    cfg = digits_cfg(tmp_path, epochs=2, **{"method.name": method, "method.correction_start": 2,
                                             "method.correction_period": 1})
    s = train(cfg, echo=None)
    assert s["method"] == method
    assert s["final"]["test_acc"] > 20.0  # learning, not chance (10%)
    m = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert ("label_acc" in m[-1]) == (method == "selc")


def test_selc_corrects_targets_from_the_start_epoch(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=3, **{"method.name": "selc", "method.correction_start": 3,
                                             "method.correction_period": 1, "method.correction_momentum": 0.5})
    engine = Engine(cfg, echo=None)
    one_hot = engine.state.targets.clone()
    for epoch in (1, 2):
        engine.run_epoch(epoch)
        engine.epoch = epoch
    assert torch.equal(engine.state.targets, one_hot)
    engine.run_epoch(3)
    moved = (engine.state.targets - one_hot).abs().sum(1)
    assert (moved > 0).all()
    assert torch.allclose(engine.state.targets.sum(1), torch.ones(len(moved)))


def test_data_loader_workers_path(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=1, **{"data.num_workers": 1, "method.name": "ce"})
    s = train(cfg, echo=None)
    assert s["final"]["test_acc"] > 20.0


@pytest.mark.slow
def test_knnmix_beats_cross_entropy_on_noisy_digits(tmp_path):
    """The headline: 40% symmetric noise on digits, same seed, network and epochs; last-epoch test accuracy."""
    results = {}
    for method in ("ce", "knnmix"):
        cfg = digits_cfg(tmp_path, **{"method.name": method, "out": str(tmp_path / method), "epochs": None})
        results[method] = train(cfg, echo=None)["final"]["test_acc"]
    assert results["knnmix"] > results["ce"] + 5.0, results
