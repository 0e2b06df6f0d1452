"""The benchmark command cannot rot: its smoke tier runs end to end and writes a well-formed result.

This checks the command and the shape of its output only; the numbers of a two-epoch run mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_entry_point():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_tier_writes_a_well_formed_table(tmp_path):
    run = load_entry_point()
    argv = ["--tier", "smoke", "--runs-dir", str(tmp_path / "runs #1")]
    assert run.main(argv) == 0
    [json_path] = (tmp_path / "runs #1" / "results").glob("smoke-*.json")  # not in benchmarks/results: a check only
    result = json.loads(json_path.read_text())
    methods = ["ce", "mixup", "selc", "knnmix", "cleanlab", "oracle"]
    assert result["methods"] == methods and len(result["settings"]) == 2
    assert {(c["setting"], c["method"]) for c in result["cells"]} == {
        (s, m) for s in result["settings"] for m in methods
    }
    for cell in result["cells"]:
        assert 0.0 <= cell["last_test_acc"] <= 100.0 and cell["epoch_time_s"] > 0
    assert result["commit"] and result["machine"]["cores"]
    assert shlex.split(result["command"]) == ["python", "benchmarks/run.py", *argv]  # quoted: it runs again as typed
    assert 0 < result["wall_s"] < 3600  # the invocation's wall clock, which a tier's runtime budget is checked by
    assert set(result["cost_ratios"]) >= {"knnmix_epoch_vs_ce", "cleanlab_total_vs_ce"}
    md = json_path.with_suffix(".md").read_text()
    assert "| noise | ce | mixup | selc | knnmix | cleanlab | oracle |" in md
    oracle = [c for c in result["cells"] if c["method"] == "oracle"]
    assert all(c["extra"]["clean_samples"] < c["train_size"] / 0.55 for c in oracle)  # trained on the clean part
    for setting in result["settings"]:
        assert md.count(f"| {setting} |") >= 4
    assert json_path.with_suffix(".png").stat().st_size > 10_000
    assert "Recall (" in md and "| none |" not in md.split("## Noisy-label detection")[1].split("## Cost")[0]
    # --render re-writes the report from the JSON alone, without training, beside that JSON (it wrote <tier>-<date>.md,
    # over another result of that day)
    renamed = json_path.with_name("renamed.json")
    json_path.rename(renamed)
    assert run.main(["--render", str(renamed)]) == 0
    assert renamed.with_suffix(".md").read_text() == md and not json_path.exists()
    # a second result of the tier that day goes beside the first, never over it
    from knnmix_bench import runner

    renamed.rename(json_path)
    paths = runner.write_result({**result, "cells": [{**c, "commit": "0ld"} for c in result["cells"][:1]]},
                                json_path.parent)
    assert paths["json"] == json_path.with_name(json_path.stem + "b.json") and json.loads(json_path.read_text())
    assert f"Commit: `{result['commit']}` (cells kept from earlier runs: `0ld`)" in paths["md"].read_text()
    # a kept cell is one of the config asked for: its network too, when a cell names it (a --set model.name cell
    # kept the small_cnn run)
    cell = next(p.parent for p in (tmp_path / "runs #1").rglob("config.yaml") if (p.parent / "cell.json").exists())
    job = {"config": {k: v for k, v in yaml.safe_load((cell / "config.yaml").read_text()).items()}}
    assert runner._same_config(cell, job)
    job["config"]["model"] = {**job["config"]["model"], "name": "auto"}
    assert runner._same_config(cell, job)
    job["config"]["model"]["name"] = "preact_resnet18"
    assert not runner._same_config(cell, job)


def test_unknown_tier_and_method_are_one_line_errors(tmp_path, capsys):
    run = load_entry_point()
    assert run.main(["--tier", "huge"]) == 2
    assert run.main(["--tier", "smoke", "--methods", "coteaching", "--results-dir", str(tmp_path)]) == 2
    assert run.main(["--tier", "smoke-tuned", "--seeds", "0", "100", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "huge" in err[0] and "coteaching" in err[1]
    assert err[2] == ("benchmark: error: --seeds includes 100, the seed tier smoke-tuned's sweeps tune with: "
                      "evaluated on it, a selected config scores its own tuning luck; choose other seeds")
    assert not any(tmp_path.iterdir())  # refused before a sweep started


@pytest.mark.slow
def test_scaling_benchmark_runs_and_writes_its_result(tmp_path, capsys, monkeypatch):
    # imported by name from a path entry, so the gather benchmark's spawned processes can import it too
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    scaling = importlib.import_module("scaling")
    out = tmp_path / "scaling.json"
    assert scaling.main(["--quick", "--sizes", "3000", "100000", "--dim", "32", "--max-queries", "1000",
                         "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    over = result["epoch_overhead"]
    assert over["ce_epoch_s"] > 0 and set(over["knnmix"]) == {"knnmix_bank_every_1", "knnmix_bank_every_2",
                                                                "knnmix_correcting_every_epoch"}
    assert all(r["epoch_s"] > 0 and r["ratio"] > 0 for r in over["knnmix"].values())
    assert over["knnmix"]["knnmix_bank_every_1"]["phase_s"]["embed"] > 0  # every epoch embeds the training set
    assert "correction" not in over["knnmix"]["knnmix_bank_every_1"]["phase_s"]  # corrects in epoch 1 only (untimed)
    assert over["knnmix"]["knnmix_correcting_every_epoch"]["phase_s"]["correction"] > 0
    small, big = result["bank"]
    assert small["n"] == 3000 and small["gather_s"] > 0
    assert small["queries_timed"] == 1000 and small["flat_search_extrapolated"]  # 1,000 of 3,000 queries timed
    assert big["flat_search_extrapolated"] and 0.0 <= big["ivf_recall_at_k"] <= 1.0 and big["ivf_build_s"] > 0
    printed = capsys.readouterr().out
    assert "| knnmix bank every 2 (mixing phase, K=1) |" in printed and "| 100,000 |" in printed
    assert result["command"] == "python benchmarks/scaling.py --quick --sizes 3000 100000 --dim 32 --max-queries " \
        f"1000 --threads 1 --out {out}"  # the command as given, not pytest's
    with pytest.raises(SystemExit) as stop:  # a traceback from deep in the loader, after the import
        scaling.main(["--dataset", "nope", "--sizes"])
    assert stop.value.code == 2 and "--dataset 'nope': not a knnmix dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_the_tuned_protocol_sweeps_selects_on_validation_and_resumes(tmp_path, capsys):
    """smoke-tuned: each tuned method's own sweep (knnmix sweep) per noise setting, the selection on the noisy
    validation split, evaluation cells with the selected config; a second run with --resume trains nothing."""
    run = load_entry_point()
    args = ["--tier", "smoke-tuned", "--settings", "asymmetric:0.4", "--results-dir", str(tmp_path / "results"),
            "--runs-dir", str(tmp_path / "runs")]
    assert run.main(args) == 0
    [json_path] = (tmp_path / "results").glob("smoke-tuned-*.json")
    result = json.loads(json_path.read_text())
    assert set(result["selections"]) == {"ce", "knnmix"}  # cleanlab trains with ce's selection
    for method, by_setting in result["selections"].items():
        assert set(by_setting) == set(result["settings"])
        for setting, sel in by_setting.items():
            trial = Path(sel["run_folder"])
            assert (trial / "summary.json").exists()  # a completed trial of that method's sweep, at the tuning seed
            assert json.loads((trial / "summary.json").read_text())["seed"] == 100
            cells = [c for c in result["cells"] if c["setting"] == setting and c["method"] == method]
            assert cells and all(c["selected_config"] == sel["selected_config"] and c["seed"] == 0 for c in cells)
    cleanlab = [c for c in result["cells"] if c["method"] == "cleanlab"]
    assert all(c["selected_config"] == result["selections"]["ce"][c["setting"]]["selected_config"] for c in cleanlab)
    assert "## Selected configurations" in json_path.with_suffix(".md").read_text()
    capsys.readouterr()
    assert run.main([*args, "--resume"]) == 0
    assert "3 cells kept from an earlier run, 0 to train" in capsys.readouterr().out
    # the sweeps are used only with --resume, and only for the space they were started with (they were reused
    # without a word, and other --settings ended in a RuntimeError traceback)
    assert run.main(args) == 2
    assert "already holds the tuned sweep of ce: pass --resume" in capsys.readouterr().err
    other = [a if a != "asymmetric:0.4" else "symmetric:0.5" for a in args]
    assert run.main([*other, "--resume"]) == 2
    assert "was started with another space (" in (err := capsys.readouterr().err) and "-> ['symmetric:0.5']" in err


@pytest.mark.slow
def test_sweep_benchmark_measures_the_smoke_sweep(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweeps = importlib.import_module("sweeps")
    out = tmp_path / "sweeps.json"
    assert sweeps.main(["--quick", "--out", str(out)]) == 0
    smoke = json.loads(out.read_text())["smoke"]
    assert smoke["trials"] == 2 and smoke["wall_s"] > smoke["train_s"] > 0
    assert all(t["held_s"] >= t["train_s"] > 0 for t in smoke["per_trial"])
    assert all(0 <= t["first_result_after_s"] < smoke["wall_s"] for t in smoke["per_trial"])  # seconds into the sweep
    assert "per-trial overhead" in capsys.readouterr().out


def test_idle_ray_benchmark_times_every_arm_and_leaves_no_ray(tmp_path, capsys, monkeypatch):
    """Both kinds of arm (no Ray; a Ray started with ``ensure_ray``'s arguments); the Ray arm that starts fastest
    stands for the others (a Ray start costs this 2-core suite ~10 s)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    idle_ray = importlib.import_module("idle_ray")
    assert set(idle_ray.ARMS) == {"alone", "beside an idle Ray", "beside an idle Ray without its dashboard"}
    arms = {k: v for k, v in idle_ray.ARMS.items() if k != "beside an idle Ray"}
    monkeypatch.setattr(idle_ray, "ARMS", arms)
    out = tmp_path / "idle.json"
    assert idle_ray.main(["--rounds", "1", "--steps", "20", "--settle", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["arms"]
    assert list(result) == list(arms) and result["alone"]["ratio_to_alone"] == 1.0
    assert all(len(a["seconds"]) == 1 and a["mean_s"] > 0 for a in result.values())
    ray_arm = result["beside an idle Ray without its dashboard"]  # a start costs CPU; "alone" starts nothing
    assert ray_arm["start_cpu_s"][0] > 0.5 and len(ray_arm["stop_cpu_s"]) == 1 and "start_cpu_s" not in result["alone"]
    import ray

    assert not ray.is_initialized()  # each arm's Ray is shut down after it
    assert "beside an idle Ray without its dashboard" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # zero rounds: a StatisticsError traceback after the work
        idle_ray.main(["--rounds", "0", "--out", str(out)])
    assert stop.value.code == 2 and "--rounds and --steps must be at least 1" in capsys.readouterr().err


def test_suite_cpu_benchmark_charges_each_process_to_its_kind(tmp_path, capsys, monkeypatch):
    """A command that starts two Python children, one busy for ~1 s of CPU and one idle: the busy one's time is
    charged to its kind (a lower bound: the last sample before it ends), the idle one's is not."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    suite_cpu = importlib.import_module("suite_cpu")
    burn = "import time; t = time.process_time()\nwhile time.process_time() - t < 1.5: pass"
    idle = f"{sys.executable} -m timeit -n 1 -r 1 'import time; time.sleep(1)' > /dev/null"
    command = ["sh", "-c", f"{sys.executable} -c '{burn}' & {idle}; wait"]
    out = tmp_path / "cpu.json"
    spin = "import os; t = os.times()\nwhile os.times()[0] - t[0] < 1: pass"
    outsider = subprocess.Popen([sys.executable, "-c", spin])
    try:  # (busy beside the command, not started by it: not counted)
        assert suite_cpu.main(["--interval", "0.05", "--out", str(out), "--", *command]) == 0
    finally:
        outsider.kill()
    result = json.loads(out.read_text())
    kinds = {row["kind"]: row for row in result["kinds"]}
    assert result["returncode"] == 0 and result["command"] == command
    busy = kinds["python -c import time; t = time.process_time"]
    assert 0.75 <= busy["cpu_s"] <= 2.0 and busy["processes"] == 1, kinds
    assert kinds["python -m timeit"]["cpu_s"] < 0.5 and not any("os.times" in k for k in kinds), kinds
    assert result["sampled_cpu_s"] <= result["machine_cpu_s"] and "python -c import time" in capsys.readouterr().out
    for argv, kind in [(["ray::TrainController.run", ""], "ray::TrainController"),
                       (["/v/bin/python", "-c", suite_cpu.XDIST_WORKER], "pytest-xdist worker"),
                       (["/v/bin/python3 -u /v/bin/knnmix sweep smoke"], "knnmix sweep"),  # a title: one string
                       (["/v/python", "-X", "importtime", "-m", "knnmix.cli", "train"], "python -m knnmix.cli train"),
                       (["/r/raylet", "--x=1"], "raylet")]:
        assert suite_cpu.kind(argv) == kind, argv
    assert suite_cpu.main(["--out", str(out), "--", "sh", "-c", "exit 3"]) == 3  # the command's status
    with pytest.raises(SystemExit) as stop:
        suite_cpu.main(["--interval", "0", "--out", str(out)])
    assert stop.value.code == 2 and "--interval must be positive" in capsys.readouterr().err


def test_per_test_cpu_benchmark_charges_each_test_and_keeps_pytests_status(tmp_path, capsys, monkeypatch):
    """Two tests run one after another through scripts/test.sh: one busy for 1 s of CPU, one failing. The busy one is
    charged at least its own CPU time (the machine's, so other load adds to it, never takes away), and the run's
    exit status is pytest's."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    per_test_cpu = importlib.import_module("per_test_cpu")
    tests = tmp_path / "test_two.py"
    tests.write_text("import time\n\n\ndef test_burn():\n    t = time.process_time()\n"
                     "    while time.process_time() - t < 1:\n        pass\n\n\ndef test_fail():\n    assert False\n")
    out = tmp_path / "cpu.json"
    assert per_test_cpu.main(["--out", str(out), "--", str(tests), "-p", "no:cacheprovider"]) == 1
    result = json.loads(out.read_text())
    rows = {r["test"].split("::")[-1]: r for r in result["rows"]}
    assert set(rows) == {"test_burn", "test_fail"} and result["tests"] == 2 and result["returncode"] == 1
    assert rows["test_burn"]["cpu_s"] >= 0.95 and rows["test_burn"]["wall_s"] >= 0.95, rows  # (one thread)
    (f,) = result["files"]
    assert f["tests"] == 2 and f["cpu_s"] == pytest.approx(sum(r["cpu_s"] for r in rows.values()), abs=0.2)
    assert "test_burn" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        per_test_cpu.main(["--top", "-1", "--out", str(out)])
    assert stop.value.code == 2 and "--top must be at least 0" in capsys.readouterr().err


@pytest.mark.parametrize("arm, method", [("knnmix", "knnmix"), ("mixup", "mixup")])
def test_each_asha_comparison_arm_builds_its_space(monkeypatch, arm, method):
    """``sweeps.py --asha ARM``: the arm's space validates with its overrides, in both of its forms (ASHA, and the
    grace period stretched to the whole run), on 24 seeded random trials of one noise setting."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sweeps = importlib.import_module("sweeps")
    from knnmix import spaces as SP

    name, overrides, epochs = sweeps.ARMS[arm]
    for extra, grace in (([], 1), ([f"sweep.asha.grace_period={epochs}"], epochs)):
        space = SP.load_space(name, overrides + extra)
        assert space.trials == space.startup_trials == 24 and not space.start_with
        assert [s.spec for s in space.settings] == ["symmetric:0.5"] and space.epochs == epochs
        assert space.asha.grace_period == grace and space.asha.reduction_factor == 4
        base = space.base_config()
        assert base.method.name == method and base.data.name == "fashion-mnist" and base.data.train_subset == 4000


@pytest.mark.parametrize("grace, factor", [(1, 4), (2, 3), (4, 2), (6, 8), (15, 3)])
def test_the_asha_replay_stops_the_trials_rays_own_bracket_stops(monkeypatch, grace, factor):
    """``asha_replay.replay`` against Ray's ``_Bracket`` fed the same curves epoch by epoch, one trial after another:
    the same trial epochs and the same best value."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    replay = importlib.import_module("asha_replay").replay
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.schedulers.async_hyperband import _Bracket

    rng = np.random.default_rng(grace * 10 + factor)
    curves = [list(np.round(rng.uniform(10, 50, 20) + np.linspace(0, 10, 20) * rng.uniform(-1, 1), 3))
              for _ in range(24)]
    bracket, spent, best = _Bracket(grace, 20, factor, 0), 0, -np.inf
    for i, curve in enumerate(curves):
        trial = SimpleNamespace(trial_id=str(i))
        for epoch, value in enumerate(curve, 1):
            spent, best = spent + 1, max(best, value)
            if bracket.on_result(trial, epoch, value) == TrialScheduler.STOP:
                break
    assert replay(curves, grace, factor) == (spent, best)
    assert spent < 24 * 20  # the case stops something, so the comparison could fail


def test_the_asha_retrain_trains_each_recorded_pick_on_the_sweeps_data(monkeypatch, tmp_path):
    """``asha_retrain.py``: the picks its rule names, read from the committed results by the sweep's own rule, and a
    pick trained with a fresh training seed on the sweep's noisy labels (noise seed 0)."""
    from knnmix import config as C

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    retrain = importlib.import_module("asha_retrain")
    picks = retrain.picks()
    assert {n: (s["asha"]["trial"], s["full"]["trial"]) for n, s in picks.items()} == {"knnmix": (4, 22),
                                                                                       "mixup": (16, 17)}
    assert [picks["mixup"][a]["recorded_best"] for a in ("asha", "full")] == [44.5, 45.875]
    s = picks["mixup"]
    curve = retrain.train_one(s["space"], s["overrides"] + ["epochs=2", "data.train_subset=600"], s["asha"]["params"],
                              3, tmp_path / "run")
    cfg = C.load(str(tmp_path / "run" / "config.yaml"))
    assert (cfg.seed, cfg.noise.seed, cfg.noise.spec, cfg.method.mixup_alpha) == (
        3, 0, "symmetric:0.5", s["asha"]["params"]["method.mixup_alpha"])
    assert len(curve) == 2 and all(0 < v <= 100 for v in curve)
    assert retrain.train_one(s["space"], [], {}, 3, tmp_path / "run") == curve  # a finished run is read, not retrained


def test_the_asha_held_out_check_picks_what_its_rule_names_and_runs_stage_b_after_stage_a(monkeypatch, tmp_path):
    """``asha_heldout.py``: grace 1 / factor 3 picks trial 3 of the committed seed-0 replay (its rule.txt), in 133
    trial epochs; stage B (two real sweeps) runs only when stage A's pick is an equal best. The runs themselves are
    ``asha_retrain.train_one``'s, tested above; here they are replaced by fixed curves."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    heldout = importlib.import_module("asha_heldout")
    pick, params, ran, _ = heldout.replayed_pick()
    assert pick == 3 and sum(ran) == 133 and params["method.k"] == 2 and params["method.warmup_epochs"] == 2
    calls = []

    def fake_retrain(runs, label, params, arm="knnmix"):  # 44.0 against the full pick's 45.30 +- 0.42: not equal
        calls.append(label)
        return {"params": params, "best": {"mean": 44.0, "std": 0.5}, "last": {"mean": 44.0, "std": 0.5}}

    monkeypatch.setattr(heldout, "retrain", fake_retrain)
    monkeypatch.setattr(heldout, "asha_vs_full", lambda *a: pytest.fail("stage B ran after stage A failed"))
    out = tmp_path / "heldout.json"
    assert heldout.main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert calls == ["stage-a-asha"] and "stage_b" not in result
    assert result["stage_a"]["equal_best"] is False and result["stage_a"]["gap"] > result["stage_a"]["allowed"]


def test_the_asha_held_out_check_on_the_mixup_space_runs_stage_b_with_rays_default_placement(monkeypatch, tmp_path):
    """``--space mixup`` (asha-heldout-mixup/rule.txt): no stage A; the mixup arm's timed comparison on sweep seed 1
    with grace 1 / factor 4, each arm's completed best trial trained again on the mixup arm's data, the result in its
    own folder (not over the knnmix check's)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    heldout = importlib.import_module("asha_heldout")
    monkeypatch.setattr(heldout, "RESULTS", tmp_path / "results")
    compared, trained = [], []

    def fake_comparison(out, arm, extra):
        compared.append((arm, extra))
        trial = lambda alpha, epochs, best: {"params": {"method.mixup_alpha": alpha}, "epochs": epochs,  # noqa: E731
                                             "best_val_acc": best}
        return {"same_configs": True, "wall_ratio": 0.25,
                "asha": {"wall_s": 100.0, "best_val_acc": 44.0, "per_trial": [trial(0.2, 25, 44.0), trial(3.0, 1, 46)]},
                "no_early_stopping": {"wall_s": 400.0, "best_val_acc": 45.0,
                                      "per_trial": [trial(0.2, 25, 44.0), trial(3.0, 25, 45.0)]}}

    def fake_retrain(runs, label, params, arm="knnmix"):
        trained.append((label, params["method.mixup_alpha"], arm))
        return {"params": params, "best": {"mean": 44.5 if "asha" in label else 44.9, "std": 0.5},
                "last": {"mean": 44.0, "std": 0.5}}

    monkeypatch.setattr(heldout, "asha_vs_full", fake_comparison)
    monkeypatch.setattr(heldout, "retrain", fake_retrain)
    assert heldout.main(["--space", "mixup", "--runs", str(tmp_path / "runs")]) == 0
    assert compared == [("mixup", ["sweep.seed=1", "sweep.asha.grace_period=1", "sweep.asha.reduction_factor=4"])]
    assert trained == [("stage-b-asha", 0.2, "mixup"), ("stage-b-full", 3.0, "mixup")]  # completed trials only
    result = json.loads((tmp_path / "results" / "asha-heldout-mixup" / "heldout.json").read_text())
    assert "stage_a" not in result and (result["grace_period"], result["reduction_factor"]) == (1, 4)
    assert result["stage_b"]["target_met"] is True and round(result["stage_b"]["gap"], 2) == 0.4
