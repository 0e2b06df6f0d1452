"""The ``knnmix`` command line: one thin layer over the engine (and, for ``--workers``/sweeps, over Ray)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import functools
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from knnmix import config as C
from knnmix.errors import (DEFAULT_WARNING_FORMAT, NO_SPACE, PATH_IN_THE_WAY, ConfigError, KnnmixError, KnnmixWarning,
                           one_line, warning_line)

#: Options that stand for a config key: ``--dataset NAME`` is ``--set data.name=NAME`` (argparse dest: key).
SHORTHANDS = {
    "dataset": "data.name", "noise": "noise.spec", "method": "method.name", "epochs": "epochs", "seed": "seed",
    "out": "out", "workers": "distributed.workers", "pretrained": "model.pretrained",
    # knnmix audit's
    "data": "data.root", "labels": "data.labels_file", "image_size": "data.image_size", "test": "data.test_root",
}


def _add_run_options(p: argparse.ArgumentParser, resume: str | None = None, tracking: bool = True,
                     command: str = "train") -> None:
    """The config options every training command shares; ``resume``: what --resume / --overwrite act on;
    ``command``: whose --register help to show."""
    p.add_argument("--config", help="YAML config file, or an embedded preset name (digits, audit)")
    p.add_argument("--dataset", help="shorthand for --set data.name=NAME")
    p.add_argument("--noise", help="shorthand for --set noise.spec=SPEC (e.g. symmetric:0.4, cifar10n:worse)")
    p.add_argument("--method", help=argparse.SUPPRESS if command == "compare" else  # refused: --methods names them
                   "shorthand for --set method.name=NAME (ce, mixup, selc, knnmix)")
    p.add_argument("--epochs", type=int, help="shorthand for --set epochs=N")
    p.add_argument("--seed", type=int, help="shorthand for --set seed=S")
    p.add_argument("--out", help="shorthand for --set out=DIR (the run folder)")
    p.add_argument("--workers", type=int, help="shorthand for --set distributed.workers=N (Ray Train workers)")
    p.add_argument("--pretrained", help="shorthand for --set model.pretrained=PATH (a local weights file)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, e.g. --set method.k=5 (repeatable)",
    )
    if tracking:
        _add_tracking_options(p, "log the finished run to this MLflow tracking URI (default: MLFLOW_TRACKING_URI if "
                                 "set, else no logging)", command)
    if resume:
        p.add_argument("--resume", action="store_true", help=f"continue {resume} in --out from its checkpoint")
        p.add_argument("--overwrite", action="store_true", help=f"replace {resume} in --out")


REGISTER_HELP = {
    "train": "register the logged model (model_best.pt) as a version of this MLflow model name",
    "compare": "register each method's logged model as a version of NAME-<method>",
    "sweep": "register each noise setting's best model as a version of this MLflow model name",
}


def _add_tracking_options(p: argparse.ArgumentParser, text: str, command: str = "train") -> None:
    p.add_argument("--tracking-uri", help=text)
    p.add_argument("--register", metavar="NAME", help=REGISTER_HELP[command])


def load_config(args: argparse.Namespace) -> C.Config:
    """Defaults <- ``--config`` <- the shorthand options given <- ``--set``."""
    path = C.preset_path(args.config) if args.config else None
    cfg = C.load(path, args.overrides, **{key: getattr(args, dest, None) for dest, key in SHORTHANDS.items()})
    # '~' from a config file or --set out=~/x (no shell expands it) is the home folder, as for data.root and sweeps
    return C.replace(cfg, out=os.path.expanduser(cfg.out)) if cfg.out.startswith("~") else cfg


def resume_config(args: argparse.Namespace, default_out: str = C.Config().out) -> None:
    """Resuming: the run folder's ``config.yaml`` is the config unless ``--config`` names one (the run folder:
    ``--set out=DIR``, the last one, beats ``--out DIR``, then ``default_out``, as in :func:`load_config`)."""
    outs = [value for key, value in map(C.parse_override, args.overrides) if key == "out"]
    saved = Path(str(outs[-1] if outs else args.out or default_out)).expanduser() / "config.yaml"
    if saved.exists() and not args.config:
        args.config = str(saved)
    elif not args.config and saved.with_name("checkpoint.pt").exists():  # else: every key "changed" to its default
        raise KnnmixError(f"{str(saved)!r} is missing, the config of the run to resume: restore it, or name the "
                          "run's config file with --config")


def warn_unread(args: argparse.Namespace, configs: Sequence[C.Config]) -> None:
    """A ``--set`` of a key that none of the runs reads (method.k of a ce run) changes nothing: say so."""
    for item in args.overrides:
        key = C.parse_override(item)[0]
        unread = [C.unread_keys(cfg).get(key) for cfg in configs]
        if all(unread):
            warnings.warn(f"--set {item} changes nothing: {unread[0]}", KnnmixWarning, stacklevel=2)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        resume_config(args)
    cfg = load_config(args)
    warn_unread(args, [cfg])
    summary = run_training(cfg, args)
    print(json.dumps({k: summary[k] for k in ("final", "best_val", "mlflow_run_id", "registered_model")
                      if k in summary}))
    return 0


def run_training(cfg: C.Config, args: argparse.Namespace) -> dict[str, Any]:
    """Single process, or Ray Train when ``distributed.workers > 0``; then logged to MLflow when a tracking URI is
    given (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``)."""
    from knnmix.tracking import TRAIN_EXPERIMENT, Store, log_training_run, reach, registered_version

    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    register = getattr(args, "register", None)
    if register and not uri:
        raise KnnmixError(f"--register {register}: nothing is logged to MLflow without a tracking URI "
                          "(--tracking-uri or MLFLOW_TRACKING_URI)")
    store = Store.from_uri(uri) if uri else None  # a bad URI is an error before training, not after
    if store is not None:
        from knnmix.scale import ray_env

        ray_env.quiet()  # MLflow's INFO lines too
        reach(store, TRAIN_EXPERIMENT, register)
    if cfg.distributed.workers > 0:
        from knnmix.scale.train import train_distributed as train
    else:
        from knnmix.engine.train import train  # type: ignore[assignment]
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if store is None:
        return summary
    try:
        summary["mlflow_run_id"] = log_training_run(store, Path(cfg.out), summary, register=register)
        if register:
            summary["registered_model"] = registered_version(store, register, summary["mlflow_run_id"],
                                                             {"knnmix.noise_spec": cfg.noise.spec})
    except Exception as exc:  # MLflow's, SQLAlchemy's or the OS's (a store gone, its artifacts unwritable)
        again = "--resume in place of --overwrite" if args.overwrite else "--resume"
        raise KnnmixError(f"the run in {cfg.out!r} is trained, but logging it to MLflow failed: {one_line(exc)}; "
                          f"once that is mended, the same command with {again} logs it (and trains nothing "
                          "again)") from None
    return summary


def cmd_compare(args: argparse.Namespace) -> int:
    """Train several methods on the same data, noise, network, epochs and seed; print their accuracies."""
    if args.method or any(C.parse_override(o)[0] == "method.name" for o in args.overrides):
        raise KnnmixError("compare trains each method of --methods (default: ce,knnmix); name them there, "
                          "not with --method or --set method.name")
    base = load_config(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise KnnmixError("--methods needs at least one method name")
    if twice := sorted({m for m in methods if methods.count(m) > 1}):
        raise KnnmixError(f"--methods names {', '.join(twice)} more than once (each method's run goes to "
                          f"{Path(base.out) / twice[0]})")
    configs = [C.replace(base, **method_run(base, m)) for m in methods]
    warn_unread(args, configs)
    results = []
    for cfg in configs:
        print(f"\n=== {cfg.method.name} ===", flush=True)
        # --resume continues the methods that have a run and starts the others (a comparison stopped before them);
        # --register NAME registers each method's model as its own NAME-<method>
        resume = args.resume and has_run(cfg)
        try:
            results.append(run_training(cfg, argparse.Namespace(**{
                **vars(args), "resume": resume, "register": args.register and f"{args.register}-{cfg.method.name}"})))
        except ConfigError as exc:  # (the run's own config.yaml holds what it was started with)
            if not resume:
                raise
            raise ConfigError(f"{exc}; compare --resume continues each method's run with the command the comparison "
                              f"started with, its options included ({cfg.method.name}'s: "
                              f"{str(Path(cfg.out) / 'config.yaml')!r})") from None
    table = comparison_table(results)
    runs = [{"seed": s["seed"], "method": s["method"], "last_test_acc": s["final"]["test_acc"],
             "val_selected_test_acc": s["best_val"]["test_acc"], "best_val_epoch": s["best_val"]["epoch"],
             "commit": s["commit"], "run_folder": str(Path(cfg.out).resolve()), "config": s["config"],
             **{k: s[k] for k in ("mlflow_run_id", "registered_model") if k in s}}
            for s, cfg in zip(results, configs)]
    out = Path(base.out) / "comparison.json"
    out.write_text(json.dumps({"command": shlex.join(["knnmix", *args.argv]), "runs": runs, "table": table},
                              indent=1) + "\n")
    print(f"\n{table}\n\nevery run's result and resolved config: {out}")
    return 0


def has_run(cfg: C.Config) -> bool:
    """Whether ``cfg``'s run exists: its folder's checkpoint or, on Ray Train, also Ray Train's checkpoints."""
    if cfg.distributed.workers > 0:
        from knnmix.scale.train import run_exists

        return run_exists(cfg)
    from knnmix.engine.checkpoint import RunFolder

    return RunFolder(cfg.out).has_run()


def method_run(base: C.Config, method: str) -> dict[str, str]:
    """The config changes of ``method``'s run in a comparison: its run folder ``<out>/<method>`` and, in a shared
    ``distributed.storage_path``, its own Ray Train run name ``<name or out folder's name>-<method>`` (by the run
    folder's name alone every comparison's runs were named ``ce``, ``knnmix``...: a second one was refused)."""
    changes = {"method.name": method, "out": str(Path(base.out) / method)}
    if base.distributed.storage_path is not None:
        changes["distributed.name"] = f"{base.distributed.name or Path(base.out).expanduser().absolute().name}-{method}"
    return changes


def comparison_table(summaries: Sequence[dict[str, Any]]) -> str:
    from knnmix.engine.report import NO_TEST, noise_note, pct

    head = "| method | last-epoch test acc (%) | val-selected test acc (%) | best val acc (%) | epoch time (s) |"
    lines = [head, "|---|---|---|---|---|"]
    for s in summaries:
        lines.append(
            f"| {s['method']} | {pct(s['final']['test_acc'], '')} | {pct(s['best_val']['test_acc'], '')} | "
            f"{pct(s['best_val']['val_acc'], '')} | {s['epoch_time_s']:.2f} |"
        )
    first = summaries[0]
    noise = noise_note(first["noise"], first["noise_rate"], first["train_noise_rate"])
    lines.append(
        f"\n{first['dataset']}, noise {first['noise']} ({noise}), "
        f"{first['model']}, {first['epochs']} epochs, seed {first['seed']}, commit {first['commit']}"
    )
    if first["final"]["test_acc"] is None:
        lines.append(f"test accuracies n/a: {NO_TEST}")
    if first["best_val"]["val_acc"] is None:
        lines.append("val accuracies n/a: data.val_fraction=0 keeps no validation split")
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    """Train knnmix on a folder of images with untrusted labels; write the ranked list and the picture of suspects.

    An image size the user did not choose is chosen from the images (data.image_size null), and with it the network
    when model.name is auto (knnmix.data.imagefolder.choose_image_size); the resolved config records both.
    """
    if args.show < 0:
        raise KnnmixError(f"--show {args.show}: use 0 or more (how many suspects to print)")
    folder = Path(args.data).expanduser()  # as data.root: '~' quoted or from a script is the home folder
    if args.dataset is None and not args.labels and not folder.is_dir():
        found = "is a file, not a folder of images" if folder.exists() else "does not exist"
        raise KnnmixError(f"data folder {args.data!r} {found}")
    if args.resume and not args.config:  # the run's own config.yaml (its epochs, its --set), as train resumes
        resume_config(args, C.load("audit").out)
    args.config = args.config or "audit"  # the embedded audit preset unless --config names another
    cfg = load_config(args)
    warn_unread(args, [cfg])
    summary = run_training(cfg, args)
    print(audit_report(Path(cfg.out) / "label_issues.csv", summary, args.show))
    return 0


def audit_report(csv_path: Path, summary: dict[str, Any], show: int) -> str:
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    issues = summary.get("label_issues", {})
    lines = [
        f"{issues.get('flagged', sum(r['is_label_issue'] == '1' for r in rows))} of {len(rows)} labels look wrong "
        "(clean probability < 0.5 and another class suggested). Most suspect first:",
        "",
        "| rank | item | given | suggested | clean prob | confidence in suggestion |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows[:show]:
        item = r.get("path") or f"row {r['row']}"
        lines.append(
            f"| {r['rank']} | {item} | {r.get('given_class', r['given_label'])} | "
            f"{r.get('corrected_class', r['corrected_label'])} | {float(r['clean_prob']):.3f} | "
            f"{float(r['suggestion_confidence']):.3f} |"
        )
    lines += ["", f"full list: {csv_path}", f"picture of the top suspects: {csv_path.with_suffix('.png')}"]
    subset = summary.get("config", {}).get("data", {}).get("train_subset")
    if subset is not None:
        lines.append(f"not ranked: every image outside the seeded subset of data.train_subset={subset} (drop it to "
                     "rank every image)")
    if summary.get("val_size"):
        lines.append(f"not ranked: the {summary['val_size']} images held out as noisy validation "
                     "(--set data.val_fraction=0 ranks every image)")
    return "\n".join(lines)


def cmd_config(args: argparse.Namespace) -> int:
    given = [f"--{d.replace('_', '-')}" for d in ("config", *SHORTHANDS) if getattr(args, d, None) is not None]
    if (args.doc or args.presets) and (given or args.overrides):  # they print what no config changes
        raise KnnmixError(f"--doc and --presets take no config options: drop {', '.join(given or ['--set'])}")
    if args.doc:
        print(config_doc())
    elif args.presets:
        print("\n".join(sorted(p.stem for p in C.PRESETS.glob("*.yaml"))))
    else:
        print(C.to_yaml(load_config(args)), end="")
    return 0


def config_doc() -> str:
    """The config reference as markdown (``docs/config.md`` is exactly this text)."""
    lines = [
        "# Config reference",
        "",
        "Generated by `knnmix config --doc` from the comments in `src/knnmix/config.py`; every key can be set in a "
        "YAML file or with `--set key=value`.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, tp, default, doc in C.field_docs():
        lines.append(f"| `{key}` | {tp} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Ray Tune + Optuna + ASHA sweep of a search space, one Optuna study per noise setting, logged to MLflow."""
    from knnmix import spaces as SP
    from knnmix import sweep_folder as SF
    from knnmix.scale import ray_env

    ray_env.quiet(args.verbose)  # before Ray is imported: some of its settings are read at import
    from knnmix.tracking import Store

    if args.space is None and not args.resume:
        raise KnnmixError("name a search space file, e.g. knnmix sweep search_spaces/smoke.yaml")
    if args.out is None:
        if args.space is None:
            raise KnnmixError("--resume without a space file needs --out (the sweep folder to continue)")
        args.out = str(Path("runs") / "sweeps" / SP.load_space(args.space, args.overrides).name)
    folder = SF.SweepFolder(SF.sweep_root(args.out))
    space = SF.resolve_space(folder, args.space, args.overrides, resume=args.resume)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")  # --resume refuses one that differs
    store = Store.from_uri(uri) if uri else None
    from knnmix.scale import sweep as S

    summary = S.run_sweep(space, folder.root, store=store, resume=args.resume, verbose=args.verbose,
                          register=args.register)
    best = {s["noise"]: s["best"] and {k: s["best"][k] for k in ("val_acc", "test_acc", "params", "registered_model")
                                       if k in s["best"]} for s in summary["settings"]}
    if summary["failed"]:  # (before the JSON line, which comes last)
        print(f"knnmix: {summary['failed']} trial(s) failed; see {folder.root / SF.SUMMARY_MD}", file=sys.stderr)
    print(json.dumps({"sweep": str(folder.root), "failed": summary["failed"], "best": best}), flush=True)
    return 1 if summary["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="knnmix", allow_abbrev=False,
        description="Train image classifiers on noisy labels with clean-weighted nearest-neighbour mixing.",
    )
    # no abbreviated flags ('--worker 2' ran as --workers 2): a typo is an error, and a new flag cannot change them
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    p = sub.add_parser("train", help="train one run into its run folder")
    _add_run_options(p, resume="the run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several methods on identical settings and print a table")
    _add_run_options(p, resume="each method's run", command="compare")
    p.add_argument("--methods", default="ce,knnmix", help="comma-separated methods (default: ce,knnmix)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "audit",
        help="train on your own images and labels, then rank the labels most likely wrong",
        description="Train knnmix on a folder of images (one sub-folder per class, or images plus --labels CSV) "
        "and write label_issues.csv (every image ranked by how likely its label is wrong, with a suggested label) "
        "and label_issues.png (the top suspects) into --out.",
    )
    p.add_argument("data", help="folder of images: one sub-folder per class, or the root the --labels CSV refers to")
    p.add_argument("--labels", help="CSV with path,label columns (shorthand for --set data.labels_file=...)")
    p.add_argument("--image-size", type=int, help="square side the images are resized to (data.image_size; "
                   "default: chosen from the images: 32, 64 or 224 pixels)")
    p.add_argument("--test", help="a folder or CSV with trusted labels, reported as the test split (data.test_root)")
    p.add_argument("--show", type=int, default=10, help="suspects printed on the terminal (default 10)")
    _add_run_options(p, resume="the audit run")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "sweep",
        help="tune hyper-parameters per noise setting: Ray Tune + Optuna (TPE) + ASHA, logged to MLflow",
        description="Sweep a search space (search_spaces/README.md): one Optuna study per noise setting, each trial "
        "run in its Tune trial's own process (distributed.workers <= 1) or as a Ray Train run, stopped early by ASHA "
        "on the noisy-validation accuracy; every trial logged to MLflow.",
    )
    p.add_argument("space", nargs="?", help="search space YAML file (or a name in search_spaces/, e.g. smoke)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key of the base run (e.g. --set epochs=4), or with the prefix sweep. a field of "
        "the space (e.g. --set sweep.trials=5, --set sweep.params.method.k.high=3); repeatable",
    )
    p.add_argument("--out", help="sweep folder (default runs/sweeps/<space name>)")
    _add_tracking_options(p, "MLflow tracking URI (default: MLFLOW_TRACKING_URI if set, else "
                             "sqlite:///<cwd>/mlflow.db with artifacts in <cwd>/mlartifacts)", "sweep")
    p.add_argument("--verbose", action="store_true", help="show Ray's, Tune's and the trials' own output")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the sweep in --out: finished trials are kept, interrupted ones resume from their checkpoint",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("config", help="print the resolved config, its documentation, or the presets")
    _add_run_options(p, tracking=False)
    p.add_argument("--doc", action="store_true", help="print every config key with its type, default and meaning")
    p.add_argument("--presets", action="store_true", help="list the embedded presets")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; ``argv`` ``None``: this process is the ``knnmix`` program (``sys.argv``)."""
    from knnmix.scale import ray_env

    ray_env.LEAVE_WITH_RAY = argv is None  # a program, not a caller that outlives its Ray (see ray_env)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed, recorded with results (compare)
    ray_env.sigterm_as_interrupt()  # kill / timeout / a batch system stop a command as Ctrl+C does (ensure_ray again)
    resumable = args.command in ("train", "compare", "audit")  # (a sweep says how to resume when Tune has stopped)
    overwrite = getattr(args, "overwrite", False)  # (which --resume excludes)
    hint = RESUME_HINT.replace("--resume", "--resume in place of --overwrite") if overwrite else RESUME_HINT
    return guarded(lambda: args.func(args), hint if resumable else "")


#: OSErrors of a path that its user can mend (missing, no permission, a file or folder in the way, no space).
USER_FIXABLE = NO_SPACE | PATH_IN_THE_WAY | {errno.ENOENT, errno.ENAMETOOLONG}

#: After "knnmix: interrupted" for the commands that train into run folders.
RESUME_HINT = "; the same command with --resume continues from the last checkpoint"


def guarded(command: Callable[[], int], interrupted: str = "") -> int:
    """Run a command: a user error (or a file that cannot be read or written) is one line on stderr and exit status
    2, Ctrl+C status 130; knnmix's warnings are one line each."""
    warnings.formatwarning = warning_line  # type: ignore[assignment]
    # Ray prefixes its workers' lines "(RayTrainWorker pid=...)" in colour: escape codes in a log file or a pipe
    os.environ.setdefault("RAY_COLOR_PREFIX", "" if sys.stdout.isatty() and sys.stderr.isatty() else "0")
    try:
        return int(command())
    except KnnmixError as exc:
        return last_line(f"knnmix: error: {exc}", 2)
    except OSError as exc:  # a path that cannot be read or written for a reason its user can mend: the path and why
        if not isinstance(exc.filename, str | os.PathLike) or exc.errno not in USER_FIXABLE:
            raise  # (a file descriptor, or an I/O fault a retry may clear: a traceback)
        paths = " -> ".join(repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None)
        return last_line(f"knnmix: error: {paths}: {exc.strerror or one_line(exc)}", 2)
    except KeyboardInterrupt:
        return last_line(f"knnmix: interrupted{interrupted}", 130)
    finally:
        warnings.formatwarning = DEFAULT_WARNING_FORMAT


def last_line(line: str, status: int) -> int:
    """Print ``line`` as the last line of stderr and return ``status``. The ``knnmix`` program leaves its Ray first
    (a caller of :func:`main` keeps it): Ray's thread that prints the workers' and actors' lines (a placement-group
    cleaner's traceback after a failed Ray Train start) stops with the connection, so none of them runs into the
    line or follows it. Another Ctrl+C meanwhile prints the line and ends the program at once."""
    from knnmix.scale import ray_env

    ray = sys.modules.get("ray")
    # (not after SIGTERM: ray_env's watcher would take this Ray's end for a Ray stopped with the program)
    if (ray_env.LEAVE_WITH_RAY and getattr(ray, "is_initialized", lambda: False)() and not ray_env.WATCHING.is_set()
            and threading.current_thread() is threading.main_thread()):
        undo = on_signals((signal.SIGINT,), exit_now(status, line))
        try:
            with contextlib.suppress(Exception):  # (at exit anyway)
                ray.shutdown()
        finally:
            undo()
    print(line, file=sys.stderr)
    return status


def exit_with(status: int) -> NoReturn:
    """End the program with ``status``. Its command has said what it did (a JSON line last); Ray and MLflow still shut
    down at exit (a few seconds): a Ctrl+C or SIGTERM then ends the process at once with that status (Ray's own
    processes end with it), instead of a KeyboardInterrupt traceback from inside Python's teardown."""
    on_signals((signal.SIGINT, signal.SIGTERM), exit_now(status))
    sys.exit(status)


def exit_now(status: int, line: str = "") -> Callable[[], None]:
    """What ends the program at a signal (:func:`on_signals`' act): ``line`` on stderr, if any, the streams flushed,
    then the process gone with ``status`` at once, also when a stream is a closed pipe (``knnmix ... | head``)."""

    def now() -> None:
        try:
            if line:
                with contextlib.suppress(Exception):
                    print(line, file=sys.stderr)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
        finally:
            os._exit(status)

    return now


def on_signals(signums: tuple[int, ...], act: Callable[[], None]) -> Callable[[], None]:
    """Run ``act`` (which ends the process) as soon as one of ``signums`` arrives, also while the main thread is held
    in native code; returns the function that undoes this (once it returns, ``act`` no longer runs). Main thread only.
    Python runs a signal's handler in the main thread between two bytecodes only, and Ray's shutdown holds the main
    thread in C++ (``core_worker.shutdown_driver``, ~0.3 s idle, longer under load) with the GIL released: so the
    Python handler does nothing, and a thread woken by the C-level handler (``signal.set_wakeup_fd``) acts. (Once the
    interpreter is finalising, after the atexit calls, that thread no longer runs: a signal then changes nothing.)"""
    read, write = os.pipe()
    os.set_blocking(write, False)
    lock, done = threading.Lock(), threading.Event()
    befores = {signum: signal.signal(signum, lambda *_: None) for signum in signums}
    wakeup_before = signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        try:
            while got := os.read(read, 1):  # (b"" once undone)
                with lock:
                    if got[0] in signums and not done.is_set():  # (another byte: a signal with another handler)
                        act()
        finally:
            os.close(read)

    threading.Thread(target=watch, name="knnmix-signals", daemon=True).start()

    def undo() -> None:
        with lock:  # (waits for an act under way: it ends the process)
            if done.is_set():
                return
            done.set()
        signal.set_wakeup_fd(wakeup_before)
        for signum, before in befores.items():
            signal.signal(signum, before if before is not None else signal.SIG_DFL)
        os.close(write)  # the watcher reads b"" and ends

    return undo


def console() -> NoReturn:
    """The ``knnmix`` program."""
    exit_with(main())


if __name__ == "__main__":
    console()
