"""The engine end to end on real (small) data: run folder, resume, label audit, and knnmix vs cross-entropy."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import torch

from knnmix import config as C
from knnmix.engine import train as E
from knnmix.engine.checkpoint import RunFolder, folder_lock, read_metrics
from knnmix.engine.train import train
from knnmix.errors import CheckpointError, ConfigError, DivergedError, KnnmixError, KnnmixWarning
from knnmix.provenance import command, git_commit


def digits_cfg(tmp_path, **dotted):
    """The embedded digits preset, shortened."""
    base = C.load(C.preset_path("digits"))
    defaults = {"epochs": 4, "out": str(tmp_path / "run"), "threads": 1, "log_every": 100}
    defaults.update(dotted)
    if defaults["epochs"] is None:  # the preset's own length
        defaults["epochs"] = base.epochs
    return C.replace(base, **defaults)


class Stop(Exception):
    pass


def stop_after(epoch):
    def cb(run, record, summary):
        if record["epoch"] == epoch:
            raise Stop

    return cb


def test_run_folder_holds_every_output(tmp_path):
    cfg = digits_cfg(tmp_path, **{"method.warmup_epochs": 1, "method.correction_start": 3,
                                  "method.correction_period": 1})
    summary = train(cfg, echo=None)
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "noisy_labels.npz", "metrics.jsonl", "checkpoint.pt",
                 "model_best.pt", "summary.json", "label_issues.csv", "label_issues.png"):
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
    assert "warnings" not in json.loads((run / "run.json").read_text())  # its set-up warned of nothing
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
    for key in ("model", "optimizer", "scheduler", "epoch", "config", "state", "rng", "history", "model_args"):
        assert key in ck
    assert set(ck["state"]) == {"targets", "clean_prob", "loss_history", "neighbours", "features"}
    assert ck["state"]["features"].numel() == 0  # kept only for neighbours=batch
    assert (ck["state"]["neighbours"] >= 0).all()


def test_run_json_keeps_the_warnings_of_the_runs_set_up_also_for_a_second_run_in_one_process(tmp_path):
    """What a sweep says its trials warned of (a trial's own lines are not shown: it runs in a Ray process); a Ray
    actor may host one trial after another, so a second run in the process keeps the same warnings too."""
    cfg = digits_cfg(tmp_path, epochs=1, **{"data.train_subset": 200, "noise.spec": "symmetric:0.95"})
    kept = []
    for attempt in (1, 2):
        train(C.replace(cfg, out=str(tmp_path / f"run{attempt}")), echo=None)
        kept.append(json.loads((tmp_path / f"run{attempt}" / "run.json").read_text()).get("warnings"))
    assert kept[0] == kept[1] and len(kept[0]) == 2, kept
    assert kept[0][0].startswith("noise symmetric:0.95: 10 of 10 classes are given one other class's label more")
    assert kept[0][1].startswith("knnmix never mixes neighbours: epochs=1 ends before its mixing phase starts")
    # resumed to reach the mixing phase: run.json says what its set-up warns of now
    first = int(re.search(r"starts in epoch (\d+)", kept[0][1]).group(1))
    train(C.replace(cfg, out=str(tmp_path / "run1"), epochs=first), resume=True, echo=None)
    assert json.loads((tmp_path / "run1" / "run.json").read_text())["warnings"] == kept[0][:1]


def test_a_resume_after_a_kill_between_checkpoints_keeps_the_checkpoints_selected_weights(tmp_path):
    """Stopped after epoch 5 of a run that checkpoints every 3rd epoch, with a better epoch 4 or 5 saved to
    model_best.pt: resumed to 3 epochs, the summary selected epoch <= 3 but model_best.pt kept the later epoch's
    weights (what MLflow logs and --register registers)."""
    cfg = digits_cfg(tmp_path, epochs=50, checkpoint_every=3, seed=1, **{"data.train_subset": 300,
                                                                        "method.name": "ce"})
    with pytest.raises(Stop):
        train(cfg, echo=None, on_epoch=stop_after(5))
    best = max(read_metrics(tmp_path / "run" / "metrics.jsonl"), key=lambda r: (r["val_acc"], -r["epoch"]))
    assert best["epoch"] > 3  # (the case: a selection past the checkpoint)
    summary = train(C.replace(cfg, epochs=3), resume=True, echo=None)
    saved = torch.load(tmp_path / "run" / "model_best.pt", weights_only=True)
    run = E.build_run(C.replace(cfg, epochs=3))
    run.model.load_state_dict(saved["state_dict"])
    assert E.evaluate(run, run.splits.val) == pytest.approx(summary["best_val"]["val_acc"])  # the selected weights
    assert saved["epoch"] == summary["best_val"]["epoch"] <= 3  # and the file says which epoch they are


@pytest.mark.parametrize("neighbours", ["bank", "batch"])
def test_resume_continues_exactly(tmp_path, neighbours):
    """neighbours=batch searches the features of the last embedding, which a resume between two embeddings (epoch 4
    here: embeddings in 3, 5 and 6) had lost: it embedded again and refitted the mixture, unlike the run it resumed."""
    dotted = {"epochs": 5, "method.warmup_epochs": 1, "method.correction_start": 3, "method.correction_period": 1}
    if neighbours == "batch":
        dotted.update({"epochs": 6, "method.neighbours": "batch", "method.correction_period": 3,
                       "method.bank_every": 2})
    full_cfg = digits_cfg(tmp_path, **dotted, out=str(tmp_path / "full"))
    train(full_cfg, echo=None)

    cut_cfg = digits_cfg(tmp_path, **dotted, out=str(tmp_path / "cut"))
    with pytest.raises(Stop):
        train(cut_cfg, echo=None, on_epoch=stop_after(3))
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


def test_a_resume_with_more_epochs_stretches_the_cosine_schedule(tmp_path):
    """Extending a finished 2-epoch run to 4 epochs continues the cosine schedule over 4 epochs from where it
    stands; the saved schedule's own length would give epoch 3 a learning rate of 0 and epoch 4 a rising one."""
    cfg = digits_cfg(tmp_path, epochs=2, **{"method.name": "ce", "data.train_subset": 300})
    train(cfg, echo=None)
    train(C.replace(cfg, epochs=4), resume=True, echo=None)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert lrs == pytest.approx([0.05, 0.025, E.cosine_lr(0.05, 0.0, 2, 4), E.cosine_lr(0.05, 0.0, 3, 4)])
    assert lrs[2] > lrs[3] > 0


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    train(cfg, echo=None)
    with pytest.raises(KnnmixError, match="already holds a run"):
        train(cfg, echo=None)
    with pytest.raises(KnnmixError, match="nothing to resume"):
        train(C.replace(cfg, out=str(tmp_path / "empty")), resume=True, echo=None)
    assert not (tmp_path / "empty").exists()  # a mistyped folder leaves nothing behind (not even a lock file)
    with pytest.raises(KnnmixError, match="cifar10"):  # nor does a new run that fails before writing anything
        train(C.replace(cfg, out=str(tmp_path / "new"), **{"data.name": "cifar10", "data.root": str(tmp_path)}),
              echo=None)
    assert not (tmp_path / "new").exists()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    train(C.replace(cfg, seed=1), overwrite=True, echo=None)  # replaces the run's files, keeps the user's
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["seed"] == 1
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 1
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_different_method_config_or_a_damaged_checkpoint(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    train(cfg, echo=None)
    with pytest.raises(ConfigError, match="method.k"):
        train(C.replace(cfg, **{"method.k": 3, "epochs": 2}), resume=True, echo=None)
    train(C.replace(cfg, epochs=2), resume=True, echo=None)  # more epochs is allowed
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2
    # ... and recorded: config.yaml (what MLflow logs as params) is the config that ran; run.json says who resumed it
    assert C.load(tmp_path / "run" / "config.yaml").epochs == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    (resumed,) = info["resumed"]
    assert resumed["after_epoch"] == 1 and resumed["commit"] == git_commit() and resumed["command"] == command()
    assert RunFolder(tmp_path / "run").load_checkpoint()["commit"] == git_commit()
    # a damaged checkpoint says what else the user can do
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*\(or choose another --out\)$"):
        train(C.replace(cfg, epochs=3), resume=True, echo=None)


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
    run = E.build_run(cfg)
    one_hot = run.state.targets.clone()
    for epoch in (1, 2):
        E.run_epoch(run, epoch)
        run.epoch = epoch
    assert torch.equal(run.state.targets, one_hot)
    E.run_epoch(run, 3)
    moved = (run.state.targets - one_hot).abs().sum(1)
    assert (moved > 0).all()
    assert torch.allclose(run.state.targets.sum(1), torch.ones(len(moved)))


def test_data_loader_workers_give_the_same_run_as_loading_in_process(tmp_path, monkeypatch):
    """Each batch's augmentation draws from its own seed: DataLoader worker processes (kept for the whole run)
    change where images are loaded, not what is trained."""
    import gc
    import multiprocessing

    seeded = []  # what re-seeds CUDA's generators here (a GPU run's own draws): the run's and each epoch's seeds
    real = torch.cuda.manual_seed_all
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed) or real(seed))
    dotted = {"epochs": 2, "method.name": "ce"}
    a = train(digits_cfg(tmp_path, **dotted, out=str(tmp_path / "a")), echo=None)
    in_process, seeded[:] = list(seeded), []
    gc.disable()  # the workers must stop when the run ends, not when the garbage collector finds their loader
    try:
        b = train(digits_cfg(tmp_path, **dotted, out=str(tmp_path / "b"), **{"data.num_workers": 2}), echo=None)
        assert not multiprocessing.active_children()
    finally:
        gc.enable()
    assert a["final"] == b["final"]
    assert in_process == seeded and len(seeded) == 3  # the run's seed, each epoch's (loading re-seeded per batch)
    assert a["final"]["test_acc"] > 20.0


@pytest.mark.slow
def test_knnmix_beats_cross_entropy_on_noisy_digits(tmp_path):
    """The headline: 40% symmetric noise on digits, same seed, network and epochs; last-epoch test accuracy."""
    results = {}
    for method in ("ce", "knnmix"):
        cfg = digits_cfg(tmp_path, **{"method.name": method, "out": str(tmp_path / method), "epochs": None})
        results[method] = train(cfg, echo=None)["final"]["test_acc"]
    assert results["knnmix"] > results["ce"] + 5.0, results


def test_checkpoints_load_without_running_code(tmp_path):
    """A crafted checkpoint that would run code when unpickled is refused, with one line naming the file."""
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    train(cfg, echo=None)
    torch.save({"format": 2, "model": Payload()}, tmp_path / "run" / "checkpoint.pt", pickle_module=pickle)
    with pytest.raises(KnnmixError, match="checkpoint.pt' holds objects other than tensors") as err:
        train(C.replace(cfg, epochs=2), resume=True, echo=None)
    assert "\n" not in str(err.value) and "GLOBAL posix.system" in str(err.value)  # torch's reason, not its preamble
    assert "weights_only` set to `False" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "foreign", "flipped", "shape", "type", "epoch"])
def test_a_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    """Damaged bytes (a flipped stretch too: torch.load does not check the checksums) or contents that do not fit
    the run: one line naming the file, never a resume on wrong weights or a traceback from load_state_dict."""
    import zipfile

    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    train(cfg, echo=None)
    path = tmp_path / "run" / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    if damage == "flipped":  # 64 bytes inside the largest tensor's record, the archive still well formed
        with zipfile.ZipFile(path) as z:
            largest = z.read(max(z.infolist(), key=lambda i: i.file_size))
        at = data.find(largest) + len(largest) // 2
        data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
    path.write_bytes({"truncate": data[: len(data) // 2], "random": os.urandom(4096), "empty": b""}.get(damage, data))
    if damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    if damage in ("shape", "type", "epoch"):  # a well-formed file, edited
        ckpt = torch.load(path, weights_only=True)
        if damage == "shape":
            ckpt["model"][next(iter(ckpt["model"]))] = torch.zeros(1)
        else:  # a negative epoch resumed, trained epochs -4 .. 2 and wrapped the learning-rate schedule
            ckpt["epoch"] = "three" if damage == "type" else -5
        torch.save(ckpt, path)
    with pytest.raises(KnnmixError, match=f"{path}") as err:
        train(C.replace(cfg, epochs=2), resume=True, echo=None)
    assert "\n" not in str(err.value)


def test_a_start_that_fails_before_writing_leaves_no_folder_it_made(tmp_path):
    """A run folder below folders that did not exist left those behind (an empty ./runs in an image folder, read as
    a class by the next run there); a path through '..' left one more."""
    (tmp_path / "kept").mkdir()
    for path in (tmp_path / "kept" / "runs" / "audit", tmp_path / "a" / ".." / "b" / "c" / "run"):
        with pytest.raises(KnnmixError), folder_lock(path):
            raise KnnmixError("nothing to resume")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]


def test_two_runs_into_one_folder_refuse_to_interleave(tmp_path):
    cfg = digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"})
    with folder_lock(tmp_path / "run"):  # another run holds the folder
        with pytest.raises(KnnmixError, match=r"run folder .* is in use by pid \d+ on "):
            train(cfg, echo=None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    train(cfg, echo=None)  # free again


def test_unwritable_out_and_diverging_loss_are_one_line_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(KnnmixError, match="cannot write run folder .*: Not a directory"):
        train(digits_cfg(tmp_path, epochs=1, out=str(blocker / "run"), **{"method.name": "ce"}), echo=None)
    with pytest.raises(KnnmixError, match="cannot write run folder .*: it is a file, not a folder$"):
        train(digits_cfg(tmp_path, epochs=1, out=str(blocker), **{"method.name": "ce"}), echo=None)
    with pytest.raises(DivergedError, match=r"training diverged in epoch \d+: the loss became nan .*lower optim.lr"):
        train(digits_cfg(tmp_path, epochs=3, **{"method.name": "ce", "optim.lr": 1e6}), echo=None)
    # network outputs that are not finite on the training set: the mixture fit skipped those samples silently
    run = E.build_run(digits_cfg(tmp_path, epochs=3))
    with torch.no_grad():
        next(run.model.parameters())[0].fill_(float("inf"))
    with pytest.raises(DivergedError, match=r"diverged: after epoch 0, the network's outputs on the training set are "
                                            r"not finite; lower optim.lr \(now 0.05\)"):
        run.embed_train_set()


def test_a_schedule_that_never_mixes_is_a_warning(tmp_path):
    with pytest.warns(KnnmixWarning, match="knnmix never mixes neighbours: epochs=4 ends before its mixing phase"):
        E.build_run(digits_cfg(tmp_path, epochs=4, **{"method.warmup_epochs": 2, "method.correction_start": 10}))
    with pytest.warns(KnnmixWarning, match="selc never corrects"):
        E.build_run(digits_cfg(tmp_path, epochs=4, **{"method.name": "selc", "method.correction_start": 10}))


def test_the_best_model_file_rebuilds_its_network_without_the_data(tmp_path):
    from knnmix.engine.checkpoint import load_model, load_predictor

    train(digits_cfg(tmp_path, epochs=1, **{"method.name": "ce"}), echo=None)
    model = load_model(tmp_path / "run" / "model_best.pt")
    logits, features = model(torch.zeros(3, 1, 8, 8))
    assert logits.shape == (3, 10) and not model.training
    # ready to predict: pixels in [0, 1], normalised as training did, at the size it trained on; classes named
    predictor = load_predictor(tmp_path / "run" / "model_best.pt")
    serving = torch.load(tmp_path / "run" / "model_best.pt", weights_only=True)["serving"]
    images, (mean,), (std,) = torch.rand(3, 1, 8, 8), serving["mean"], serving["std"]
    with torch.no_grad():
        assert torch.allclose(predictor(images), model((images - mean) / std)[0], atol=1e-5)
    assert predictor.classes == [str(c) for c in range(10)] and not predictor.training
    with pytest.raises(KnnmixError, match=r"images must be \(N, 1, 8, 8\) with pixels in \[0, 1\].* got \(3, 1, 28"):
        predictor(torch.rand(3, 1, 28, 28))  # small_cnn pools globally: it answered for any size
    # images straight from PIL or numpy, or normalised twice: logits without a word, all wrong
    with pytest.raises(KnnmixError, match=r"floating-point with pixels in \[0, 1\]; got torch.uint8 \(for uint8 "):
        predictor(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))
    with pytest.raises(KnnmixError, match=r"pixels in \[0, 1\] .*; got values from 0 to 255 \(images of 0-255: x /"):
        predictor(torch.arange(192.0).view(3, 1, 8, 8) * 255 / 191)
    with pytest.raises(KnnmixError, match=r"got values from -1.5 to 0.5"):
        predictor(torch.linspace(-1.5, 0.5, 192).view(3, 1, 8, 8))
    predictor(torch.full((3, 1, 8, 8), 1.2))  # a resize's overshoot past 1 is fine
    # numpy's float64 images (e.g. digits.images / 16), as an array or a tensor: the same answer, not a dtype error
    with torch.no_grad():
        for given in (images.double(), images.double().numpy()):
            assert torch.allclose(predictor(given), predictor(images))
    # a checkpoint predicts as its epoch's weights file does (it skipped the input normalisation, without a word)
    with torch.no_grad():
        assert torch.allclose(load_predictor(tmp_path / "run" / "checkpoint.pt")(images), predictor(images))
    old = {k: v for k, v in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True).items() if k != "serving"}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="holds no serving entry .*: load its run's model_best.pt"):
        load_predictor(tmp_path / "old.pt")
    # an edited file is one line naming it, before anything is allocated (10**9 classes would ask for 256 GB)
    payload = torch.load(tmp_path / "run" / "model_best.pt", weights_only=True)
    for change, needle in (({"num_classes": 10**9}, "its weights do not fit the network its model_args describe"),
                           ({"depth": 3}, "build no network"), ({"name": "vgg"}, "unknown model 'vgg'")):
        torch.save({**payload, "model_args": {**payload["model_args"], **change}}, tmp_path / "edited.pt")
        with pytest.raises(CheckpointError, match=re.escape(f"{str(tmp_path / 'edited.pt')!r}: ") + ".*" + needle):
            load_model(tmp_path / "edited.pt")


def test_without_a_validation_split_the_best_model_file_is_the_last_epoch(tmp_path):
    """data.val_fraction=0 (as the audit suggests) selects no epoch; model_best.pt, what --tracking-uri logs and
    --register registers, must still be written: the last epoch's network."""
    from knnmix.engine.checkpoint import load_model

    lines = []
    cfg = digits_cfg(tmp_path, epochs=2, **{"method.name": "ce", "data.train_subset": 300, "data.val_fraction": 0.0})
    summary = train(cfg, echo=lines.append)
    assert summary["best_val"]["val_acc"] is None
    model = load_model(tmp_path / "run" / "model_best.pt")
    last = RunFolder(tmp_path / "run").load_checkpoint()["model"]
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())
    assert "no validation split, so model_best.pt holds the last epoch" in lines[-1]


def test_the_selected_epoch_is_tested_at_the_end_from_the_checkpoint_not_a_local_file(tmp_path):
    """With test_every=0 the validation-selected weights are tested at the end. A resumed run takes them from its
    checkpoint, never from model_best.pt, which another node of a multi-node run may not see (ranks that disagreed
    about that file used to deadlock in the collective test pass)."""
    dotted = {"epochs": 3, "test_every": 0, "method.name": "ce", "data.val_fraction": 0.2}
    full = train(digits_cfg(tmp_path, **dotted, out=str(tmp_path / "full")), echo=None)
    cut = digits_cfg(tmp_path, **dotted, out=str(tmp_path / "cut"))
    with pytest.raises(Stop):
        train(cut, echo=None, on_epoch=stop_after(2))
    (tmp_path / "cut" / "model_best.pt").unlink()
    resumed = train(cut, resume=True, echo=None)
    assert resumed["best_val"] == full["best_val"] and resumed["best_val"]["test_acc"] is not None


@pytest.mark.parametrize("content", [b"not a torch file", b"\x80\x02garbage", b""])
def test_a_damaged_checkpoint_is_unreadable_not_code_carrying(tmp_path, content):
    """Damage is reported as damage: torch's message for any failed weights-only load mentions "weights only", so only
    its "Unsupported global" may be called an object that could run code."""
    from knnmix.engine.checkpoint import safe_load

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(KnnmixError, match=f"cannot read checkpoint {path} \\(truncated, corrupt") as err:
        safe_load(path)
    assert "could run code" not in str(err.value)
    assert "weights_only" not in str(err.value)  # torch's advice to load it unsafely is not passed on


def image_folder(root, per_class: int = 12):
    """Two classes of random 16x16 PNGs in class folders: a user's own (not clean) labels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / name / f"{k:03d}.png")
    return root


def folder_cfg(tmp_path, **dotted):
    return C.replace(C.Config(), **{"data.name": "imagefolder", "data.root": str(tmp_path / "images"),
                                    "data.image_size": 16, "method.name": "ce", "epochs": 1, "threads": 1,
                                    "out": str(tmp_path / "run"), "log_every": 100, **dotted})


def test_auto_noise_adds_none_to_labels_that_are_already_noisy(tmp_path):
    """noise.spec=auto, the default: a user's own labels train as given; a benchmark's clean ones get symmetric:0.4."""
    image_folder(tmp_path / "images")
    assert C.Config().noise.spec == "auto"
    summary = train(folder_cfg(tmp_path), echo=None)
    assert summary["noise"] == "none" and summary["noise_rate"] == 0.0
    assert C.load(tmp_path / "run" / "config.yaml").noise.spec == "none"  # what it resolved to
    digits = C.replace(C.Config(), **{"data.name": "digits", "method.name": "ce", "epochs": 1, "threads": 1,
                                      "out": str(tmp_path / "digits")})
    assert train(digits, echo=None)["noise"] == "symmetric:0.4"


def test_a_spec_as_typed_is_recorded_as_the_labels_it_gave(tmp_path):
    """--noise ' Symmetric:0.40' was recorded as typed in config.yaml and summary.json, and pairflip:0 as pairflip:0
    on clean labels: the canonical spec, as noisy_labels.npz has it, is recorded; the run resumes either way."""
    dotted = {"method.name": "ce", "data.train_subset": 60, "noise.spec": " Symmetric:0.40"}
    cfg = digits_cfg(tmp_path, epochs=1, **dotted)
    assert train(cfg, echo=None)["noise"] == "symmetric:0.4"
    assert C.load(tmp_path / "run" / "config.yaml").noise.spec == "symmetric:0.4"
    assert str(np.load(tmp_path / "run" / "noisy_labels.npz")["spec"]) == "symmetric:0.4"
    assert train(C.replace(cfg, epochs=2), resume=True, echo=None)["epochs"] == 2  # the spec as typed again
    assert E.canonical_noise({"noise": {"spec": " Symmetric:0.40"}}) == {"noise": {"spec": "symmetric:0.4"}}  # older
    zero = C.replace(cfg, **{"noise.spec": "pairflip:0", "out": str(tmp_path / "zero")})
    summary = train(zero, echo=None)
    assert summary["noise"] == "none" and summary["noise_rate"] == 0.0


def test_resume_on_other_data_is_refused_and_a_failed_overwrite_keeps_the_run(tmp_path):
    image_folder(tmp_path / "images")
    cfg = folder_cfg(tmp_path)
    train(cfg, echo=None)
    (tmp_path / "images" / "cat" / "000.png").rename(tmp_path / "images" / "dog" / "moved.png")  # a label changed
    with pytest.raises(ConfigError, match="cannot resume on other data") as err:
        train(C.replace(cfg, epochs=2), resume=True, echo=None)
    assert "\n" not in str(err.value)
    (tmp_path / "images" / "dog" / "extra.png").write_bytes((tmp_path / "images" / "dog" / "moved.png").read_bytes())
    with pytest.raises(ConfigError, match="cannot resume on other data"):  # one image more: not a shape traceback
        train(C.replace(cfg, epochs=2), resume=True, echo=None)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(KnnmixError):  # asymmetric noise needs a class structure a user's folder does not have
        train(C.replace(cfg, **{"noise.spec": "asymmetric:0.2"}), overwrite=True, echo=None)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before  # the run it would have replaced is intact


def test_resume_on_replaced_image_files_is_refused_but_the_same_files_elsewhere_resume(tmp_path):
    """Labels and rows alone let a resume continue on images replaced in place, with per-sample state aligned to the
    old ones; each row's file size is checked too, not the folder it lies in."""
    import shutil

    from PIL import Image

    image_folder(tmp_path / "images")
    cfg = folder_cfg(tmp_path)
    train(cfg, echo=None)
    shutil.copytree(tmp_path / "images", tmp_path / "copy")
    copy = C.replace(cfg, epochs=2, **{"data.root": str(tmp_path / "copy")})
    assert train(copy, resume=True, echo=None)["epochs"] == 2  # the same files elsewhere: data.root may change
    Image.new("L", (16, 16)).save(tmp_path / "copy" / "cat" / "000.png")  # another image under the same name
    with pytest.raises(ConfigError, match="image files were replaced since the checkpoint") as err:
        train(C.replace(copy, epochs=3), resume=True, echo=None)
    assert "\n" not in str(err.value)


def test_the_banner_measures_the_noise_of_the_rows_trained_on(tmp_path):
    lines: list[str] = []
    summary = train(digits_cfg(tmp_path, epochs=1, **{"method.name": "ce", "data.train_subset": 60}), echo=lines.append)
    assert summary["train_noise_rate"] != summary["noise_rate"]  # 54 training rows of the 1,437 the noise flipped
    assert f"(measured {100 * summary['train_noise_rate']:.2f}%)" in lines[0]


def test_a_file_the_disk_cannot_hold_is_one_line_and_leaves_the_previous_one(tmp_path):
    """A full disk while saving: torch's zip writer raised a RuntimeError ('unexpected pos ...') as a traceback and
    left its partial .tmp taking the space a --resume needs. Here a file-size limit stands in for the full disk."""
    import resource
    import signal

    from knnmix.engine.checkpoint import atomic_save

    folder = RunFolder(tmp_path)
    atomic_save({"x": torch.zeros(10)}, folder.file("checkpoint.pt"))
    folder.write_summary({"epoch": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        with pytest.raises(KnnmixError, match=r"cannot write '.*checkpoint.pt' \(the write stopped short, is the "
                                              r"disk full\? .*\); the previous checkpoint.pt, if any, is unchanged: "
                                              r"free some space, then --resume$"):
            atomic_save({"x": torch.zeros(100_000)}, folder.file("checkpoint.pt"))
        with pytest.raises(KnnmixError, match=r"cannot write '.*summary.json' \(File too large\).*: once it can be "
                                              r"written, --resume$"):  # (a file-size limit: no space to free)
            folder.write_summary({"epoch": 2, "pad": "x" * 300_000})
        with pytest.raises(KnnmixError, match=r"cannot write '.*metrics.jsonl' \(File too large\): once it can be"):
            folder.append_metrics({"epoch": 2, "pad": "x" * 300_000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    (tmp_path / "run.json").mkdir()  # not a matter of space: the advice says so
    with pytest.raises(KnnmixError, match=r"cannot write '.*run.json' \(Is a directory\).*: make the path writable, "
                                          r"then --resume$"):
        atomic_save({}, folder.file("run.json"))
    (tmp_path / "run.json").rmdir()
    (tmp_path / "checkpoint.pt.tmp").mkdir()  # the advice was to free space, and the folder's unlink hid it
    with pytest.raises(KnnmixError, match=r"cannot write '.*checkpoint.pt' \(checkpoint.pt.tmp is a folder in the "
                                          r"way\).*: make the path writable, then --resume$"):
        atomic_save({}, folder.file("checkpoint.pt"))
    (tmp_path / "checkpoint.pt.tmp").rmdir()
    (tmp_path / "metrics.jsonl").unlink()  # (append writes in place; --resume rewrites it from the checkpoint)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no .tmp left, nothing replaced
