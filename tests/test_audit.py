"""`knnmix audit` on a user's folder of images with wrong labels, and the find_label_issues API."""

from __future__ import annotations

import csv
import json
import re
from contextlib import chdir
from pathlib import Path

import numpy as np
import pytest

import knnmix
from knnmix.cli import audit_report, comparison_table, main

FASHION = Path("/usr/share/datasets/fashion-mnist")
NOISE_RATE = 0.2
PER_CLASS = 200  # 2,000 images: enough for the ranking to be measured, small enough for CI


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    """2,000 real Fashion-MNIST training images exported as PNGs into class folders, 20% under a wrong class."""
    from PIL import Image

    from knnmix.data import load_dataset

    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is missing: run `apt-get install -y dataset-fashion-mnist` (scripts/test.sh does)")
    bundle = load_dataset("fashion-mnist")
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(np.flatnonzero(bundle.train_labels == c), PER_CLASS, replace=False)
                           for c in range(10)])
    true = bundle.train_labels[rows]
    flipped = rng.random(len(rows)) < NOISE_RATE
    given = np.where(flipped, (true + rng.integers(1, 10, len(rows))) % 10, true)
    root = tmp_path_factory.mktemp("fashion_folder")
    names = [c.replace("/", "-") for c in bundle.classes]
    truth = {}
    for k, (r, g) in enumerate(zip(rows, given)):
        folder = root / names[g]
        folder.mkdir(exist_ok=True)
        path = folder / f"img{k:05d}.png"
        Image.fromarray(bundle.train.images[r, 0].numpy()).save(path)
        truth[str(path)] = bool(flipped[k])
    return root, truth


@pytest.mark.slow
def test_audit_ranks_the_flipped_labels_first(fashion_folder, tmp_path, capsys):
    root, truth = fashion_folder
    out = tmp_path / "audit"
    code = main(["audit", str(root), "--image-size", "28", "--epochs", "12", "--out", str(out),
                 "--set", "method.warmup_epochs=3", "--set", "method.correction_start=6",
                 "--set", "threads=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Most suspect first" in printed and "label_issues.png" in printed
    assert (out / "label_issues.png").stat().st_size > 10_000
    with open(out / "label_issues.csv") as fh:
        rows = list(csv.DictReader(fh))
    train_paths = [r["path"] for r in rows]
    assert len(rows) == 9 * PER_CLASS  # 10% held out as the noisy validation split, and the audit says so
    assert f"not ranked: the {len(truth) - len(rows)} images held out as noisy validation" in printed
    wrong = np.array([truth[p] for p in train_paths])
    k = int(wrong.sum())
    precision_at_k = wrong[:k].mean()
    # 20% of the labels are wrong: a random ranking has precision 0.2; knnmix must find far more.
    assert precision_at_k >= 0.75, f"precision at {k} = {precision_at_k:.3f}"
    flagged = np.array([r["is_label_issue"] == "1" for r in rows])
    recall = (flagged & wrong).sum() / k
    assert recall >= 0.7, f"recall of the flagged set = {recall:.3f}"
    # suggestions name real classes, and on the caught flips they differ from the (wrong) given class
    assert {r["corrected_class"] for r in rows} <= {p.name for p in root.iterdir()}
    caught = [r for r, w in zip(rows[:k], wrong[:k]) if w]
    assert np.mean([r["corrected_class"] != r["given_class"] for r in caught]) >= 0.8


def test_the_audit_report_says_which_images_it_did_not_rank(tmp_path):
    """An audit with data.train_subset ranked 11 of 30 images and named only the one held out for validation."""
    table = tmp_path / "label_issues.csv"
    table.write_text("rank,row,path,given_label,given_class,corrected_label,corrected_class,clean_prob,"
                     "suggestion_confidence,is_label_issue\n1,0,cat/a.png,0,cat,1,dog,0.1,0.9,1\n")
    report = audit_report(table, {"val_size": 1, "config": {"data": {"train_subset": 12}}}, show=1)
    assert "| 1 | cat/a.png | cat | dog | 0.100 | 0.900 |" in report
    assert report.splitlines()[-2:] == [
        "not ranked: every image outside the seeded subset of data.train_subset=12 (drop it to rank every image)",
        "not ranked: the 1 images held out as noisy validation (--set data.val_fraction=0 ranks every image)"]
    assert "not ranked" not in audit_report(table, {"val_size": 0, "config": {"data": {"train_subset": None}}}, 1)


def peaked(labels: np.ndarray, c: int, p: float) -> np.ndarray:
    """Predicted probabilities ``(N, c)``: ``p`` on each row's label, the rest shared by the other classes."""
    probs = np.full((len(labels), c), (1 - p) / (c - 1))
    probs[np.arange(len(labels)), labels] = p
    return probs


def test_find_label_issues_api_ranks_low_confidence_labels_first():
    n, c = 200, 4
    labels = np.random.default_rng(0).integers(0, c, n)
    probs = peaked(labels, c, 0.94)
    wrong = np.arange(0, n, 10)  # every tenth label is wrong: the model puts its mass elsewhere
    probs[wrong] = peaked((labels[wrong] + 1) % c, c, 0.94)
    table = knnmix.find_label_issues(labels, probs)
    assert set(table["index"][: len(wrong)]) == set(wrong)
    assert table["is_label_issue"][: len(wrong)].all() and not table["is_label_issue"][len(wrong):].any()
    assert (table["corrected_label"][: len(wrong)] == (labels[table["index"][: len(wrong)]] + 1) % c).all()
    with pytest.raises(ValueError):
        knnmix.find_label_issues(labels[:-1], probs)


def test_a_label_the_model_ranks_first_is_ranked_but_not_flagged():
    """An unsure sample whose suggestion is its given label was flagged 'given: 3, suggested: 3'."""
    n, c = 200, 4
    labels = np.random.default_rng(0).integers(0, c, n)
    probs = peaked(labels, c, 0.94)
    unsure = np.arange(0, n, 10)  # the given label first, but at 0.4
    probs[unsure] = peaked(labels[unsure], c, 0.4)
    table = knnmix.find_label_issues(labels, probs)
    assert set(table["index"][: len(unsure)]) == set(unsure) and (table["clean_prob"][: len(unsure)] < 0.5).all()
    assert (table["corrected_label"] == table["given_label"]).all() and not table["is_label_issue"].any()
    other = (labels + 1) % c  # a method's corrected labels that name another class: flagged
    assert table["is_label_issue"].sum() == 0 < knnmix.find_label_issues(labels, probs, corrected_labels=other)[
        "is_label_issue"][: len(unsure)].sum() == len(unsure)


def test_suspects_picture_draws_class_names_as_text(tmp_path):
    """A class folder named e.g. '$a^$' was parsed as matplotlib math: a ValueError after the whole training. The
    images are zoomed to whole pixel blocks of ~PICTURE_CELL pixels, below their captions and the title."""
    import torch
    from PIL import Image

    from knnmix.audit import PICTURE_CELL, plot_label_issues

    path = tmp_path / "label_issues.png"
    images = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    images[:, :, 3, 5] = 0  # one black pixel: a 20 x 20 block at PICTURE_CELL 160
    title = "a title much wider than the two images of this picture: it must not be cut"
    plot_label_issues(path, images, ["$a^$", "$\\x$"], ["b", "$5"], [0.1, 0.2], title=title)
    picture = Image.open(path).convert("L")
    dark = [(x, y) for y in range(picture.height) for x in range(picture.width) if picture.getpixel((x, y)) == 0]
    assert PICTURE_CELL == 160 and len(dark) > 2 * 20 * 20  # the two blocks and the text's darkest pixels
    blocks = {(x, y) for x, y in dark if y > picture.height // 2}  # below the captions: the images' blocks only
    assert len(blocks) == 2 * 20 * 20 and len({x for x, _ in blocks}) == 2 * 20, sorted(blocks)[:4]
    assert picture.width > 2 * (PICTURE_CELL + 24)  # widened for the title


def test_audit_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    code = main(["audit", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope" in err[0]


def test_audit_folder_may_start_with_the_home_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pets").mkdir()
    code = main(["audit", "~/pets", "--epochs", "0", "--out", str(tmp_path / "o")])  # past the folder check, no run
    assert code == 2 and capsys.readouterr().err.strip() == "knnmix: error: epochs: 0 is out of range; use >= 1"


def _tiny_folder(root: Path, side: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(40):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (side, side + 2, 3), dtype=np.uint8) // (1 + k % 2)  # class 1 is darker
        Image.fromarray(pixels).save(root / f"c{k % 2}" / f"{k}.png")
    return root


def test_audit_chooses_the_image_size_from_the_images_and_estimates_the_time_left(tmp_path, capsys):
    import yaml

    root = _tiny_folder(tmp_path / "folder")
    out = tmp_path / "audit"
    from knnmix.errors import KnnmixWarning

    with pytest.warns(KnnmixWarning, match=r"--set optim.restart_period=3 changes nothing: only cosine_restarts"):
        code = main(["audit", str(root), "--epochs", "2", "--out", str(out), "--set", "method.warmup_epochs=1",
                     "--set", "method.correction_start=2", "--set", "threads=1", "--set", "optim.restart_period=3"])
    assert code == 0
    printed = capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())  # 12 px images: 32 px, the small CNN, not 224/ResNet-50
    assert saved["data"]["image_size"] == 32 and saved["model"]["name"] == "small_cnn"
    assert "test, 32x32 px), noise" in printed.splitlines()[0]  # the run's first line shows the size chosen
    epoch_lines = [line for line in printed.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2 and re.search(r"~\d+m\d\ds left$", epoch_lines[0])  # the time left
    assert not epoch_lines[1].endswith("left")
    # no test accuracy, and why (an "n/a" before): here, in a comparison's table too
    assert re.search(r"^done: no test accuracy \(the data has no test split; imagefolder: data.test_root, or audit "
                     r"--test, names one\), val-selected epoch [12]; ", printed, re.M), printed
    table = comparison_table([json.loads((out / "summary.json").read_text())])
    assert "| n/a | n/a |" in table and table.endswith("test accuracies n/a: the data has no test split; imagefolder: "
                                                       "data.test_root, or audit --test, names one")
    assert "imagefolder, noise none (labels whose own noise is unknown), " in table  # was "(measured 0.00%)"

    code = main(["audit", str(root), "--epochs", "2", "--out", str(out), "--overwrite", "--image-size", "16",
                 "--set", "method.warmup_epochs=1", "--set", "method.correction_start=2", "--set", "threads=1"])
    assert code == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["image_size"] == 16  # the user's choice


def test_audit_resume_continues_the_run_as_it_was_started_and_says_when_it_trains_further(tmp_path, capsys):
    """`knnmix audit DIR --epochs 2 --set ...` then `knnmix audit DIR --resume` trained on to the audit preset's 30
    epochs without a word (the preset stood in for the run's own config.yaml), or refused the run's own --set keys
    as "a different config"."""
    root = _tiny_folder(tmp_path / "folder")
    out = tmp_path / "runs" / "audit"
    start = ["audit", str(root), "--epochs", "1", "--set", "data.val_fraction=0.2", "--set", "threads=1"]
    assert main([*start, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["audit", str(root), "--out", str(out), "--resume"]) == 0  # the same run: nothing left to train
    printed = capsys.readouterr().out
    assert "resumed after epoch 1\n" in printed and not any(x.startswith("epoch") for x in printed.splitlines())
    with chdir(tmp_path):  # without --out: the audit preset's runs/audit, not train's runs/knnmix
        assert main(["audit", str(root), "--resume", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert ("resumed after epoch 1; the run was set to end at epoch 1 and now trains to epoch 2 (epochs 1 -> 2)"
            in printed.splitlines()), printed
    assert [x.split()[1] for x in printed.splitlines() if x.startswith("epoch")] == ["2/2"]


def test_a_run_folder_inside_the_image_folder_is_refused_and_none_is_left_there(tmp_path, capsys):
    """`cd images && knnmix audit .` read its own run folder (./runs/audit) as a class, refused as one that "holds no
    images: 'runs'", and left ./runs behind; an earlier run's folder under a class folder was trained on as images
    of that class (its label_issues.png)."""
    root = _tiny_folder(tmp_path / "folder")
    with chdir(root):
        assert main(["audit", ".", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"1 folders under {root} are knnmix run folders (this run's --out, or an earlier run's)" in err and \
        err.rstrip().endswith(": runs/audit"), err
    assert sorted(p.name for p in root.iterdir()) == ["c0", "c1"]  # nothing left behind
    (root / "c1" / "old").mkdir()  # an earlier run's folder, finished
    for name in (".lock", "config.yaml", "label_issues.png"):
        (root / "c1" / "old" / name).write_text("")
    capsys.readouterr()
    assert main(["audit", str(root), "--epochs", "1", "--out", str(tmp_path / "audit")]) == 2
    assert capsys.readouterr().err.rstrip().endswith("give --out outside the image folder, and move earlier runs out "
                                                      "of it: c1/old")
    assert not (tmp_path / "audit").exists()
    (root / "c1" / "old").rename(tmp_path / "old")
    (root / "sweeps" / "none" / "trials" / "t1").mkdir(parents=True)  # a sweep: its trials take no lock
    for name in ("config.yaml", "metrics.jsonl", "label_issues.png"):
        (root / "sweeps" / "none" / "trials" / "t1" / name).write_text("")
    assert main(["audit", str(root), "--epochs", "1", "--out", str(tmp_path / "audit")]) == 2
    assert capsys.readouterr().err.rstrip().endswith(": sweeps/none/trials/t1")
    from knnmix.data.files import RUN_FOLDER_FILES
    from knnmix.engine.checkpoint import CONFIG, LOCK, METRICS
    from knnmix.sweep_folder import STATE_FILE

    assert RUN_FOLDER_FILES == (LOCK, CONFIG, METRICS, STATE_FILE)  # what the walk knows them by is what they hold
