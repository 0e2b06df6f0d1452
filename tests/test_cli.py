"""The command line as a new user meets it: one-line errors for bad input, before any training starts."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from knnmix.cli import main, on_signals
from knnmix.provenance import git_commit


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--dataset", "fashion-mnist", "--set", "data.root=/no/such/dir"], "/no/such/dir"),
        (["--dataset", "cifar10", "--set", "data.root=/no/such/cifar"], "/no/such/cifar"),
        (["--dataset", "mnist"], "'mnist'"),
        # a folder of images without --dataset imagefolder: digits trained in its place, silently
        (["--dataset", "digits", "--set", "data.root=/my/images"], "data.root='/my/images' is not used by dataset "
                                                                   "'digits' (its images ship inside scikit-learn); "
                                                                   "for a folder of your own images use --dataset "
                                                                   "imagefolder"),
        (["--noise", "gaussian:0.2"], "'gaussian'"),
        (["--method", "coteaching"], "'coteaching'"),
        (["--noise", "symmetric:1.0"], "1.0"),
        (["--noise", "symmetric:-0.1"], "-0.1"),
        (["--noise", "pairflip:abc"], "abc"),
        (["--set", "method.k=5000"], "method.k=5000"),
        (["--set", "method.temperature=-1"], "method.temperature: -1.0"),
        (["--set", "optim.lr=fast"], "optim.lr"),
        (["--set", "nosuchkey=1"], "nosuchkey"),
        (["--config", "no-such-preset"], "no-such-preset"),
        (["--config", "digit"], "config 'digit' is neither a file nor an embedded preset (audit, digits) (did you mean "
                                "'digits'?)"),
        # an empty path is the working directory to pathlib; integers past C's ints failed deep inside torch
        (["--set", "model.pretrained="], "model.pretrained: an empty path; name a file or folder"),
        (["--set", "optim.batch_size=1000000000000000000000"], "optim.batch_size: 1000000000000000000000 is out of "
                                                               "range; use <= 2147483647"),
        (["--set", "threads=99999999999"], "use <= 2147483647"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(capsys, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, "train", "--epochs", "1", "--out", str(tmp_path / "run"), *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("knnmix: error: ")
    assert needle in lines[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists(), "nothing may train after a bad input"


def test_a_set_key_that_no_run_reads_is_a_warning(capsys, tmp_path):
    import warnings

    from knnmix.errors import KnnmixWarning

    small = ["--epochs", "1", "--set", "data.train_subset=200", "--set", "method.warmup_epochs=1"]
    with pytest.warns(KnnmixWarning) as caught:  # ce reads no method.* key: method.k=3 trained nothing differently
        code, _, _ = run_cli(capsys, "train", "--method", "ce", *small, "--set", "method.k=3", "--set",
                             "optim.optimizer=adamw", "--set", "optim.momentum=0.5", "--out", str(tmp_path / "ce"))
    assert code == 0
    said = [str(w.message) for w in caught if str(w.message).startswith("--set")]
    assert said == ["--set method.warmup_epochs=1 changes nothing: method ce does not read it (it reads no method.* "
                    "key)", "--set method.k=3 changes nothing: method ce does not read it (it reads no method.* key)",
                    "--set optim.momentum=0.5 changes nothing: only sgd reads it (optim.optimizer=adamw)"]
    # a comparison warns only of what none of its methods reads: knnmix reads method.k, none of them restart_period
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, _ = run_cli(capsys, "compare", "--methods", "ce,knnmix", *small, "--set", "method.k=3", "--set",
                             "optim.restart_period=4", "--out", str(tmp_path / "compare"))
    assert code == 0
    assert [str(w.message) for w in caught if str(w.message).startswith("--set")] == [
        "--set optim.restart_period=4 changes nothing: only cosine_restarts reads it (optim.schedule=cosine)"]


def test_a_run_file_that_cannot_be_written_is_one_line_naming_it(capsys, tmp_path):
    """A folder where the run's config.yaml goes (an OSError with a path): the path and why, status 2."""
    (tmp_path / "run" / "config.yaml").mkdir(parents=True)
    code, _, err = run_cli(capsys, "train", "--config", "digits", "--epochs", "1", "--set", "data.train_subset=200",
                           "--out", str(tmp_path / "run"))
    assert code == 2 and err.strip().splitlines()[-1] == f"knnmix: error: '{tmp_path / 'run' / 'config.yaml'}': Is a "\
                                                         "directory", err
    assert "Traceback" not in err


def test_an_empty_out_is_refused_not_the_working_directory(capsys, tmp_path, monkeypatch):
    """``--out "$UNSET"``: a run (or a sweep) wrote its files straight into the working directory."""
    monkeypatch.chdir(tmp_path)
    for argv in (["train", "--config", "digits", "--epochs", "1"], ["sweep", "smoke"]):
        code, _, err = run_cli(capsys, *argv, "--out", "")
        assert code == 2 and "out: an empty path; name " in err, err
    assert list(tmp_path.iterdir()) == []


def test_abbreviated_flags_are_errors(capsys, tmp_path):
    """argparse took '--worker 2' for --workers 2 (and '--res' for --resume): a typo ran something else."""
    for argv, typo in ((["train", "--worker", "2"], "--worker 2"), (["sweep", "smoke", "--res"], "--res")):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--out", str(tmp_path / "run")])
        assert exit_.value.code == 2 and f"unrecognized arguments: {typo}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_console_script_prints_no_traceback(tmp_path):
    knnmix = os.path.join(os.path.dirname(sys.executable), "knnmix")
    proc = subprocess.run(
        [knnmix, "train", "--noise", "symmetric:1.2", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "knnmix: error: noise.spec: noise rate 1.2 in 'symmetric:1.2' is outside [0, 1)"
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_finished_program_while_its_main_thread_is_held_in_native_code(sig):
    """exit_with: Python runs a signal's handler in the main thread between bytecodes only, and Ray's shutdown at exit
    holds that thread in C++ (with the GIL released): a Ctrl+C then waited for it to come back. Here the
    main thread never comes back (a mutex locked twice by its owner): only a thread woken by the signal ends it."""
    code = textwrap.dedent("""
        import atexit, ctypes
        from knnmix.cli import exit_with
        def held():
            libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)  # (zeroed: a default mutex)
            libc.pthread_mutex_lock(mutex)
            print("held", flush=True)
            libc.pthread_mutex_lock(mutex)  # (ctypes releases the GIL; a signal does not end the wait)
        atexit.register(held)
        exit_with(3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 60)[0] and proc.stdout.readline() == "held\n"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 3 and err == "", err


def test_on_signals_acts_from_its_thread_and_once_undone_hands_the_signal_back():
    """What exit_with and last_line build on: while set, the signal acts through the woken thread (the Python handler
    does nothing); undone (twice is harmless), the earlier handler and wake-up fd are back and nothing acts."""
    got = []
    before = signal.signal(signal.SIGUSR1, lambda *_: got.append("earlier handler"))
    try:
        undo = on_signals((signal.SIGUSR1,), lambda: got.append("act"))
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(500):
            if got:
                break
            time.sleep(0.01)
        assert got == ["act"]
        undo()
        undo()
        assert signal.set_wakeup_fd(-1) == -1  # (the earlier one: none)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert got == ["act", "earlier handler"]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_config_command_prints_the_resolved_config_and_docs(capsys):
    code, out, _ = run_cli(capsys, "config", "--config", "digits", "--set", "method.k=3")
    assert code == 0
    assert "k: 3" in out and "name: digits" in out
    code, out, _ = run_cli(capsys, "config", "--doc")
    assert code == 0
    assert "| `method.temperature` | float |" in out
    code, out, _ = run_cli(capsys, "config", "--presets")
    assert "digits" in out.split()
    for extra in (["--set", "method.kk=3"], ["--epochs", "3"]):  # a config option they would ignore is an error
        code, _, err = run_cli(capsys, "config", "--doc", *extra)
        assert code == 2
        assert err.strip() == f"knnmix: error: --doc and --presets take no config options: drop {extra[0]}"


def test_config_reference_in_docs_is_current():
    from pathlib import Path

    from knnmix.cli import config_doc

    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text().strip() == config_doc().strip(), "regenerate: knnmix config --doc > docs/config.md"


def test_the_help_names_only_presets_that_exist():
    import re

    from knnmix import config as C
    from knnmix.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    named = re.search(r"embedded preset name \(([^)]*)\)", " ".join(text.split())).group(1)
    presets = {p.stem for p in C.PRESETS.glob("*.yaml")}
    assert {n.strip() for n in named.split(",")} == presets


def test_each_commands_help_describes_what_it_does():
    """--register is described for the command it is on, and the sweep's help names its default in-process
    trials (smoke.yaml's), not only Ray Train runs."""
    from knnmix.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    helps = {name: " ".join(choices[name].format_help().split()) for name in ("train", "compare", "audit", "sweep")}
    assert "NAME-<method>" in helps["compare"]
    assert all("NAME-<method>" not in helps[name] for name in ("train", "audit", "sweep"))
    assert "each noise setting's best model" in helps["sweep"] and "own process" in helps["sweep"]


def test_compare_trains_each_method_on_one_setting_and_writes_one_result_file(capsys, tmp_path, monkeypatch):
    """`knnmix compare` prints the table and writes comparison.json: every method's accuracies, commit and resolved
    config, the same data, noise and seed for all."""
    import json

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a URI would log the runs too (tested in test_sweep)
    code, out, _ = run_cli(capsys, "compare", "--config", "digits", "--methods", "ce,mixup", "--epochs", "1",
                           "--set", "data.train_subset=300", "--seed", "3", "--out", str(tmp_path / "cmp"))
    assert code == 0
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["method"] for r in result["runs"]] == ["ce", "mixup"]
    for r in result["runs"]:
        assert r["seed"] == 3 and r["config"]["seed"] == 3 and r["config"]["method"]["name"] == r["method"]
        assert 0 <= r["last_test_acc"] <= 100 and r["run_folder"] == str((tmp_path / "cmp" / r["method"]).resolve())
        assert (tmp_path / "cmp" / r["method"] / "summary.json").exists()
    assert {r["config"]["data"]["train_subset"] for r in result["runs"]} == {300}
    assert result["command"].startswith("knnmix compare") and result["table"] in out
    assert f"commit {git_commit()}" in result["table"]  # whole, -dirty included
    # --resume without the options the comparison started with (here --seed 3) is refused, saying where they are
    code, _, err = run_cli(capsys, "compare", "--config", "digits", "--methods", "ce,mixup", "--epochs", "2",
                           "--set", "data.train_subset=300", "--out", str(tmp_path / "cmp"), "--resume")
    assert code == 2 and "cannot resume with a different config (noise.seed: 3 -> 0, seed: 3 -> 0)" in err, err
    saved = tmp_path / "cmp" / "ce" / "config.yaml"
    assert err.rstrip().endswith(f"the comparison started with, its options included (ce's: '{saved}')"), err
    # --resume continues the methods that have a run and starts a method added since
    code, _, err = run_cli(capsys, "compare", "--config", "digits", "--methods", "ce,mixup,selc", "--epochs", "2",
                           "--set", "data.train_subset=300", "--seed", "3", "--out", str(tmp_path / "cmp"), "--resume")
    assert code == 0, err
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["method"] for r in result["runs"]] == ["ce", "mixup", "selc"]
    for method in ("ce", "mixup", "selc"):
        info = json.loads((tmp_path / "cmp" / method / "run.json").read_text())
        assert [r["after_epoch"] for r in info.get("resumed", [])] == ([] if method == "selc" else [1])
    # a result file that cannot be written is one line naming it (a traceback before), the runs kept
    (tmp_path / "cmp" / "comparison.json").unlink()
    (tmp_path / "cmp" / "comparison.json").mkdir()
    code, _, err = run_cli(capsys, "compare", "--config", "digits", "--methods", "ce,mixup,selc", "--epochs", "2",
                           "--set", "data.train_subset=300", "--seed", "3", "--out", str(tmp_path / "cmp"), "--resume")
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"knnmix: error: '{tmp_path / 'cmp' / 'comparison.json'}': Is a directory"), err


def test_comparisons_in_one_ray_train_storage_name_their_runs_apart(capsys, tmp_path):
    """With a shared distributed.storage_path a comparison's Ray Train runs were named by their folders, ce,
    knnmix...: any second comparison in that storage was refused (another --out did not help, --overwrite deleted
    the first one's checkpoints). Here the second one gets past that check to the data (a bad data.root, which
    with max_failures=-1 the driver reads before Ray starts)."""
    storage = tmp_path / "ray"
    (storage / "ce").mkdir(parents=True)  # a first comparison's ce run (Ray Train's record of its checkpoints)
    (storage / "ce" / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_epoch00001"}}))
    code, _, err = run_cli(capsys, "compare", "--config", "digits", "--methods", "ce", "--workers", "1", "--out",
                           str(tmp_path / "second"), "--set", f"distributed.storage_path={storage}", "--set",
                           "distributed.max_failures=-1", "--set", "data.name=fashion-mnist", "--set",
                           f"data.root={tmp_path / 'nowhere'}")
    assert code == 2 and "fashion-mnist data not found" in err, err
    assert (storage / "ce" / "checkpoint_manager_snapshot.json").exists()
    # --resume continues a method whose run only Ray Train's storage holds (its folder lost): it was refused with
    # "already holds a run; pass --resume" (compare looked for the folder's checkpoint.pt alone)
    (storage / "ce").rename(storage / "second-ce")
    code, _, err = run_cli(capsys, "compare", "--config", "digits", "--methods", "ce", "--workers", "1", "--out",
                           str(tmp_path / "second"), "--set", f"distributed.storage_path={storage}", "--set",
                           "distributed.max_failures=-1", "--set", "data.name=fashion-mnist", "--set",
                           f"data.root={tmp_path / 'nowhere'}", "--resume")
    assert code == 2 and "fashion-mnist data not found" in err, err


@pytest.mark.parametrize("named", ["--out", "--set"])
def test_resume_reads_the_run_folders_config_however_the_folder_is_named(capsys, tmp_path, named):
    """`--set out=DIR --resume` is `--out DIR --resume`: both continue from DIR/config.yaml (here one that cannot
    load, to show it is read), not from the defaults."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  name: mnist\n")
    where = ["--out", str(run)] if named == "--out" else ["--set", f"out={run}"]
    code, _, err = run_cli(capsys, "train", *where, "--resume")
    assert code == 2 and "unknown dataset 'mnist'" in err, err
    # without it, beside a checkpoint, the error says so (it listed every key as "changed" to its default)
    (run / "config.yaml").unlink()
    (run / "checkpoint.pt").write_bytes(b"")
    code, _, err = run_cli(capsys, "train", *where, "--resume")
    assert code == 2 and err.strip() == (f"knnmix: error: '{run / 'config.yaml'}' is missing, the config of the run "
                                         "to resume: restore it, or name the run's config file with --config"), err


def test_a_run_folder_named_with_tilde_is_in_the_home_folder(capsys, tmp_path, monkeypatch):
    """`out: ~/runs/x` in a config file (or `--set out=~/...`, which no shell expands) went to a folder named '~' in
    the working directory, and `--resume` there found no run; data.root, sweeps and --workers runs expand it."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    args = ["--config", "digits", "--set", "epochs=1", "--set", "data.train_subset=300", "--set", "out=~/runs/x"]
    code, _, err = run_cli(capsys, "train", *args)
    assert code == 0, err
    assert (home / "runs" / "x" / "summary.json").exists() and not (work / "~").exists()
    code, out, err = run_cli(capsys, "train", "--set", "out=~/runs/x", "--resume")  # with its saved config
    assert code == 0 and "resumed after epoch 1" in out, err


@pytest.mark.parametrize("flags,instead", [([], ""), (["--overwrite"], " in place of --overwrite")])
def test_a_run_stopped_by_sigterm_says_so_and_how_to_resume(tmp_path, interrupt_after_checkpoint, flags, instead):
    """SIGTERM (kill, timeout, a batch system) ended a run silently with status 143; now as Ctrl+C: one line. A run
    started with --overwrite was told to add --resume, which it refuses beside --overwrite."""
    import signal

    run = tmp_path / "run"
    argv = ["train", "--config", "digits", "--epochs", "500", "--set", "data.train_subset=300", "--out", str(run),
            *flags]
    code, err = interrupt_after_checkpoint(argv, run, signal.SIGTERM)
    assert code == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"knnmix: interrupted; the same command with --resume{instead} continues "
                                            "from the last checkpoint"), err[-2000:]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["compare", "--method", "selc"], "compare trains each method of --methods (default: ce,knnmix); name them "
                                          "there, not with --method or --set method.name"),
        (["compare", "--set", "method.name=selc"], "not with --method or --set method.name"),
        (["compare", "--methods", "ce,knnmix,ce"], "--methods names ce more than once"),
        (["audit", "IMAGES", "--show", "-1"], "--show -1: use 0 or more"),
        (["audit", "FILE"], "data folder 'FILE' is a file, not a folder of images"),
        (["train", "--register", "m"], "--register m: nothing is logged to MLflow without a tracking URI"),
        (["train", "--tracking-uri", "bogus://x"], "tracking URI 'bogus://x': MLflow has no tracking store for "
                                                   "'bogus://'"),
    ],
)
def test_inputs_that_would_be_ignored_or_fail_after_training_are_refused_before(capsys, tmp_path, monkeypatch, argv,
                                                                                 needle):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IMAGES" / "a").mkdir(parents=True)
    (tmp_path / "FILE").write_text("not a folder\n")
    code, _, err = run_cli(capsys, *argv, "--config", "digits", "--epochs", "1", "--out", str(tmp_path / "run"))
    assert code == 2 and err.startswith("knnmix: error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("run/**/checkpoint.pt")), "nothing may train after a bad input"


def test_compare_help_lists_methods_not_the_method_shorthand_it_refuses(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "--methods" in out and "--method " not in out and "method.name=NAME" not in out
