"""Hyper-parameter sweeps: Ray Tune + Optuna (seeded TPE) + ASHA over runs of the engine, logged to MLflow.

:func:`run_sweep` is what ``knnmix sweep SPACE.yaml`` runs: one Tune experiment for all noise settings of the space,
side by side. Each noise setting keeps its own Optuna study (:class:`SettingsSearch` hands each new trial to the
setting with the fewest trials so far; the studies live in ``optuna.db``, which ``optuna-dashboard`` opens) and its
own ASHA scheduler on the noisy-validation accuracy (:class:`SettingsASHA`), so trials are only ever compared with
trials of their own setting. A trial (:func:`run_trial`) with ``distributed.workers`` <= 1 runs the engine in the
trial's own process, reporting every epoch and checkpoint to Tune; a trial with more workers is a Ray Train run.

The sweep folder and what it holds: docs/sweeps.md.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher

from knnmix import config as C
from knnmix.engine import train as E
from knnmix.engine.checkpoint import SUMMARY, RunFolder, atomic_write_text, folder_lock
from knnmix.engine.report import numeric
from knnmix.errors import KnnmixError, KnnmixWarning, warning_line
from knnmix.provenance import git_commit, now
from knnmix.scale import ray_env
from knnmix.scale import sweep_mlflow as T
from knnmix.scale.train import fit, fits_this_machine, report_epoch, run_exists, start_or_restore, worker_config
from knnmix.spaces import METRIC, MODE, SETTING_KEY, NoiseSetting, SearchSpace
from knnmix.sweep_folder import (SPACE_FILE, SUMMARY_JSON, SUMMARY_MD, TUNE_DIR, SweepFolder, TrialRecord, best_trial,
                                 check_state, end_orphan_trials, in_process, max_concurrent, new_state, optuna_command,
                                 reported, sampled_values, startup_trials, study_name, summary_markdown, summary_table,
                                 trial_config, write_state)
from knnmix.tracking import Store, reach, registered_version

TRIAL_MEMORY = 64 * 1024**2  # nominal memory of a Ray Train trial's own process (Tune refuses zero CPUs alone)


# ----------------------------------------------------------------------------------------------------------------
# Tune pieces (built from the space; testable without Ray running)


def make_study(space: SearchSpace, setting: NoiseSetting, storage: str | None = None) -> Any:
    """``OptunaSearch`` of one noise setting: its own seeded TPE sampler and study (``<name>/<noise spec>``)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = (space.seed * 1_000_003 + zlib.crc32(setting.spec.encode())) % (2**31 - 1)  # the sweep's, per setting
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(space))
    return OptunaSearch(space=space.distributions(), metric=METRIC, mode=MODE, sampler=sampler,
        study_name=study_name(space, setting), points_to_evaluate=[dict(p) for p in space.start_with] or None,
        storage=optuna.storages.RDBStorage(storage) if storage else None)


class SettingsSearch(Searcher):
    """One Optuna study per noise setting behind one Tune search algorithm.

    Each new trial goes to the setting with the fewest trials so far (in the space's order on ties) and carries the
    setting's slug under :data:`SETTING_KEY`; results and completions go back to that setting's study. A study is
    told a trial's best epoch (what the sweep selects on, :func:`best_trial`), not its last as Ray's OptunaSearch
    would. A failed trial that ``--resume`` runs again ends twice: the rerun's result becomes a new trial there; a
    trial its study ended before a kill (Optuna writes at once, Tune saves every few seconds) is not told again.
    """
    max_concurrent: float = math.inf  # the trials running at once; Tune sets it (set_max_concurrency)

    def __init__(self, studies: dict[str, Any], trials: int) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.studies, self.trials = studies, trials
        self.setting_of: dict[str, str] = {}
        self.best_of: dict[str, float] = {}  # each running trial's best value so far
        self.live, self.ended = set[str](), set[str]()  # running; told to their study as ended
        self.done_in_study = set[str]()  # of those ended, the ones their study ended before the sweep was killed

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True  # limited in suggest(): Tune's ConcurrencyLimiter would drop a rerun's end (no longer "live")

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self.live) >= self.max_concurrent:
            return None
        started = Counter(self.setting_of.values())
        slug = min(self.studies, key=lambda s: started[s])
        if started[slug] >= self.trials:  # the least-started setting has all its trials: so have the others
            return Searcher.FINISHED
        config = self.studies[slug].suggest(trial_id)
        if not isinstance(config, dict):
            return config
        self.setting_of[trial_id] = slug
        self.live.add(trial_id)
        return {**config, SETTING_KEY: slug}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.best_of[trial_id] = max(self.best_of.get(trial_id, result[METRIC]), result[METRIC])
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """An epoch's value to the trial's study, unless the study has ended the trial (a failed trial run again)."""
        import optuna

        if trial_id in self.ended:
            return
        with warnings.catch_warnings():  # a resumed trial reports the epochs it redoes again: Optuna keeps the first
            warnings.filterwarnings("ignore", "The reported value is ignored because this `step=", UserWarning)
            try:
                self.studies[self.setting_of[trial_id]].on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:  # ended there before the sweep was killed
                self.ended.add(trial_id)
                self.done_in_study.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        best, study = self.best_of.pop(trial_id, -math.inf), self.studies[self.setting_of[trial_id]]
        if result and result.get(METRIC) is not None:
            self._report(trial_id, result)  # the last epoch (Tune gives a stopping trial's last result only here)
            result = {**result, METRIC: max(result[METRIC], best)}
        self.live.discard(trial_id)
        if trial_id not in self.ended:
            self.ended.add(trial_id)
            study.on_trial_complete(trial_id, result, error)
        elif result and result.get(METRIC) is not None and trial_id not in self.done_in_study:  # run again after it
            study.add_evaluated_point({k[len("config/"):]: v for k, v in result.items() if k.startswith("config/")
                                       and k != f"config/{SETTING_KEY}"}, result[METRIC])  # failed: Optuna keeps FAIL

    def __setstate__(self, state: dict) -> None:  # a sweep saved before these fields existed (Tune pickles it)
        self.__dict__.update({"live": set(), "ended": set(), "done_in_study": set(), **state})

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))


def run_history(root: str, trial: Any) -> list[dict[str, Any]]:
    """The epochs a trial reported, from its run folder under sweep folder ``root`` (up to the last one Tune saw)."""
    folder = SweepFolder(Path(root)).trial_dir(trial.config[SETTING_KEY], trial.trial_id)
    return [r for r in reported(folder, T.last_epoch(trial)) if r.get(METRIC) is not None]


class SettingsASHA(FIFOScheduler):
    """One ASHA scheduler per noise setting behind one Tune scheduler.

    Tune does not save a scheduler with the experiment: when a restored trial is added, the epochs it already
    reported are replayed into its setting's ASHA (``history``), so the rungs are as they were.
    """

    def __init__(self, schedulers: dict[str, ASHAScheduler], history: Callable[[Any], list[dict]] | None = None):
        super().__init__()
        self.schedulers, self.history = schedulers, history
        self._metric = METRIC  # what TrialScheduler.metric reports to Tune

    def _of(self, trial: Any) -> ASHAScheduler:
        return self.schedulers[trial.config[SETTING_KEY]]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        asha = self._of(trial)
        asha.on_trial_add(tune_controller, trial)
        for record in self.history(trial) if self.history else []:
            asha.on_trial_result(tune_controller, trial, record)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{slug}: {s.debug_string()}" for slug, s in self.schedulers.items())


def make_asha(space: SearchSpace, max_t: int | None = None) -> ASHAScheduler:
    """One noise setting's ASHA on ``val_acc`` (max) over epochs."""
    a = space.asha
    return ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=a.max_t or max_t or space.epochs,
                         grace_period=a.grace_period, reduction_factor=a.reduction_factor, brackets=a.brackets)


def trial_resources(cfg: C.Config) -> dict[str, Any]:
    """An in-process trial reserves its CPUs (and GPU); a Ray Train trial's own process none (its workers do)."""
    if in_process(cfg):
        return {"cpu": cfg.distributed.cpus_per_worker, **({"gpu": 1} if cfg.distributed.use_gpu else {})}
    return {"cpu": 0, "memory": TRIAL_MEMORY}


def run_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """One trial (a Tune function trainable). Nothing after the last report may matter: ASHA can stop a trial at
    any report, so the engine finishes (summary, label audit) before it reports its last epoch."""
    ray_env.quiet(payload.get("verbose", False))
    cfg = trial_config(payload, config[SETTING_KEY], sampled_values(config), tune.get_context().get_trial_id())
    if not in_process(cfg):
        from ray.tune.integration.ray_train import TuneReportCallback

        fit(cfg, resume=run_exists(cfg), callbacks=[TuneReportCallback()], verbose=payload.get("verbose", False))
        return
    run, folder = E.build_run(cfg), RunFolder(cfg.out)
    # Tune's checkpoint if it kept one; else the trial's own run folder, which is ahead of Tune's last saved state
    # when a killed sweep resumes (the folder checkpoints every epoch, Tune's state every few seconds)
    start_or_restore(run, folder, checkpoint := tune.get_checkpoint(), resume=True)
    if checkpoint is None and run.epoch == cfg.epochs:  # it ended after Tune's last save: finished again (summary,
        E.fit(run, folder, echo=None)  # audit) before its epochs are reported, as Tune may stop it at the last one
    for record in run.history if checkpoint is None else []:  # the folder's epochs, again: the restored trial has
        tune.report(numeric(record))  # none, and ASHA judges each rung on the epoch of that rung
    if run.epoch < cfg.epochs:
        E.fit(run, folder, echo=None, on_epoch=report_epoch(tune.report, tune.Checkpoint, named=False))


# ----------------------------------------------------------------------------------------------------------------
# Results


def collect_trials(folder: SweepFolder) -> list[TrialRecord]:
    """Every trial of the sweep's Tune experiment, in creation order, with its epochs read from its run folder."""
    out = []
    for trial in sorted(tune.ExperimentAnalysis(str(folder.file(TUNE_DIR))).trials, key=_creation_order):
        slug = trial.config[SETTING_KEY]
        run = folder.trial_dir(slug, trial.trial_id)
        failed = trial.status == "ERROR"
        out.append(TrialRecord(
            trial_id=trial.trial_id, status=str(trial.status), slug=slug, params=sampled_values(trial.config),
            run_folder=run, records=reported(run, T.last_epoch(trial) or math.inf),  # no result seen: every epoch
            completed=(run / SUMMARY).exists() and not failed, error=_error_line(trial) if failed else None))
    return out


def _creation_order(trial: Any) -> tuple[int, str]:
    """Tune's experiment tag starts with the trial's index (``"3_method.k=2,..."``)."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, trial.trial_id)


def _error_line(trial: Any) -> str:
    """The last line of the trial's error file (for a knnmix error: its one-line message)."""
    lines = [ln.strip() for ln in (trial.get_error() or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "failed (see the Tune trial folder)"


# ----------------------------------------------------------------------------------------------------------------
# The driver


def run_sweep(
    space: SearchSpace, out: str | Path, *, store: Store | None = None, resume: bool = False,
    echo: Callable[[str], None] | None = print, verbose: bool = False, register: str | None = None,
    command: str = "knnmix sweep",
) -> dict[str, Any]:
    """Run (or continue) the sweep of ``space`` into ``out``; returns the summary (``sweep_summary.json``).
    ``command``: what the hint after an interruption tells the user to run with ``--resume --out``."""
    folder = SweepFolder(Path(out).expanduser().absolute())
    say = echo or (lambda _s: None)
    ray_env.quiet(verbose)
    with folder_lock(folder.root, "sweep folder"):
        state = check_state(folder, resume)
        if state is not None and Path(state.get("folder", folder.root)).resolve() != folder.root.resolve():
            raise KnnmixError(f"sweep folder {str(folder.root)!r} was started as {state['folder']!r}, which its Tune "
                              "experiment and Optuna studies name: move it back there to resume it")
        if state is not None:
            saved = Store(state["tracking"]["uri"], state["tracking"]["artifact_root"])
            if store is not None and store.uri != saved.uri:
                raise KnnmixError(f"tracking URI {store.uri!r} (--tracking-uri or MLFLOW_TRACKING_URI) differs from "
                                  f"the store this sweep logs to ({saved.uri!r})")
            store = saved
        store = store or Store.resolve()
        settings = space.settings
        configs = {s.slug: worker_config(space.setting_config(s)) for s in settings}  # paths absolute
        # a store that fails, or a trial this machine's Ray can never hold, is one line before anything is written
        # (no sweep to --resume, no MLflow run): Tune would wait for an in-process trial's CPUs forever, and every Ray
        # Train trial would fail alike, one by one
        experiment_id = reach(store, space.experiment_name, register)
        first = configs[settings[0].slug]
        ray_env.ensure_ray(verbose=verbose, dashboard=verbose or not in_process(first))  # Ray Train trials need it
        fits_this_machine(C.replace(first, **{"distributed.workers": max(first.distributed.workers, 1)}))
        if state is None:
            atomic_write_text(folder.file(SPACE_FILE), space.to_yaml())
            state = {**new_state(space, store), "folder": str(folder.root)}  # Tune's state names it: not moved
        ml = T.open_sweep_runs(store, space, settings, state["mlflow"], folder.file(SPACE_FILE), experiment_id)
        with T.ended_on_failure(store, ml):  # its runs KILLED / FAILED, not RUNNING for good
            write_state(folder, state := {**state, "status": "running"})  # (again, after a stop)

            concurrency = max_concurrent(space, first, ray.cluster_resources())
            payload = {"configs": {k: C.to_dict(v) for k, v in configs.items()}, "root": str(folder.root),
                       "verbose": verbose}
            trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), trial_resources(first))
            tune_dir = str(folder.file(TUNE_DIR))
            total = space.trials * len(settings)
            each = "in-process" if in_process(first) else f"{first.distributed.workers} Ray Train workers"
            say(f"sweep {space.name}: {len(settings)} noise setting(s) x {space.trials} trials, up to {concurrency} "
                f"at a time ({each} each); {', '.join(space.params)} searched; folder {folder.root}; "
                f"MLflow {store.uri}")
            os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # how often Tune saves what --resume starts from
            if tune.Tuner.can_restore(tune_dir):  # with the searcher, the run config and its TrialLogger as saved
                tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
            else:
                logger = T.TrialLogger(store=store, experiment_id=ml["experiment_id"], parents=ml["settings"],
                                       specs={s.slug: s.spec for s in settings}, root=str(folder.root), total=total)
                studies = {s.slug: make_study(space, s, folder.optuna_storage) for s in settings}
                search = SettingsSearch(studies, space.trials)
                scheduler = SettingsASHA({s.slug: make_asha(space, configs[s.slug].epochs) for s in settings},
                                         partial(run_history, str(folder.root)))
                tune_config = tune.TuneConfig(num_samples=total, search_alg=search, scheduler=scheduler,
                                              max_concurrent_trials=concurrency,
                                              # a stopped Ray Train trial unwinds its worker group for longer than
                                              # Tune waits before it reuses the actor (2 s): the next trial would fail
                                              reuse_actors=in_process(first))
                run_config = tune.RunConfig(name=TUNE_DIR, storage_path=str(folder.root), callbacks=[logger],
                                            failure_config=tune.FailureConfig(max_failures=0), verbose=0)
                tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
            T.ECHOES[str(folder.root)] = say  # the trials' lines (the TrialLogger Tune restores was saved without it)
            sigint = signal.getsignal(signal.SIGINT)
            try:
                tuner.fit()
            finally:
                T.ECHOES.pop(str(folder.root), None)
                if sigint is not None and signal.getsignal(signal.SIGINT) is not sigint:  # Tune's handler outlives
                    signal.signal(signal.SIGINT, sigint)  # the run: it would swallow the next Ctrl+C (or SIGTERM)
            trials = collect_trials(folder)
            ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
            if len(ended) < total:  # Tune returns normally after Ctrl+C (it saved its state first)
                write_state(folder, {**state, "status": "stopped"})
                say(f"\nsweep stopped ({len(ended)} of {total} trials ended); continue it with:\n"
                    f"  {command} --resume --out {folder.root}")
                raise KeyboardInterrupt
            entries = [_finalize_setting(space, s, [t for t in trials if t.slug == s.slug], folder, store, ml, register)
                       for s in settings]
            summary = _finalize_sweep(space, folder, store, ml, entries)
            state.update(status="done", finished=now())
            write_state(folder, state)
            warn_of_trials(summary)
            say("\n" + summary_table(summary))
            say(f"\nsweep folder: {folder.root}\nOptuna studies: {optuna_command(folder.optuna_storage)}\n"
                f"MLflow UI: {store.ui_command()}\n  then open {store.experiment_url(ml['experiment_id'])}")
            return summary


#: How many of a setting's distinct trial warnings the sweep repeats when it ends (all are in sweep_summary.json).
SHOWN_WARNINGS = 3


def warn_of_trials(summary: dict[str, Any]) -> None:
    """Say, once per setting and message, what the trials' set-up warned of (their own lines are not shown: trials
    run in Ray's processes), most frequent first. Filters that make warnings errors still get a line: the sweep has
    run, and its summary must follow."""
    sys.stdout.flush()  # the trials' lines first, also when stdout is a file

    def warn(text: str) -> None:
        try:
            warnings.warn(text, KnnmixWarning, stacklevel=3)
        except KnnmixWarning:  # (python -W error)
            print(warning_line(text, KnnmixWarning), end="", file=sys.stderr)

    for s in summary["settings"]:
        ranked = sorted(s["warnings"].items(), key=lambda kv: -kv[1])
        prefix = f"noise {s['noise']}: "
        for message, n in ranked[:SHOWN_WARNINGS]:
            warn(f"{prefix}{n} of {s['trials']} trials: {message.removeprefix(prefix)}")
        if len(ranked) > SHOWN_WARNINGS:
            warn(f"{prefix}{len(ranked) - SHOWN_WARNINGS} more warnings of its trials in {summary['folder']}/"
                 f"{SUMMARY_JSON} (settings: warnings)")


def _finalize_setting(space: SearchSpace, setting: NoiseSetting, trials: list[TrialRecord], folder: SweepFolder,
                      store: Store, ml: dict[str, Any], register: str | None) -> dict[str, Any]:
    """The summary entry of one noise setting, and (once) its MLflow run's artifacts."""
    best = best_trial(trials)
    entry: dict[str, Any] = {"noise": setting.spec, "slug": setting.slug, "trials": len(trials),
        "completed": sum(t.completed for t in trials), "stopped_early": sum(t.stopped_early for t in trials),
        "failed": sum(t.failed for t in trials), "errors": {t.trial_id: t.error for t in trials if t.failed},
        "mlflow_run_id": ml["settings"][setting.slug], "trial_ids": [t.trial_id for t in trials], "best": None,
        "study": study_name(space, setting),
        "warnings": dict(Counter(message for t in trials for message in t.warnings))}  # message: trials
    if best is not None:  # best_trial only picks a trial with a best epoch
        entry["best"] = {"trial_id": best.trial_id, "params": best.params, **best.best(), "completed": best.completed,
                         "last_test_acc": best.records[-1].get("test_acc"), "run_folder": str(best.run_folder)}
    end_orphan_trials(folder.optuna_storage, entry["study"])  # (before its importances)
    T.finish_setting_run(store, ml, setting, entry, trials, best, folder.root / setting.slug / "plots",
                         folder.optuna_storage, register)
    if register and entry.get("best_mlflow_run_id"):  # models:/NAME/VERSION, tagged with its noise setting
        entry["best"]["registered_model"] = registered_version(store, register, entry["best_mlflow_run_id"],
                                                               {"knnmix.noise_spec": setting.spec})
    return entry


def _finalize_sweep(space: SearchSpace, folder: SweepFolder, store: Store, ml: dict[str, Any],
                    settings: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {
        "name": space.name, "commit": git_commit(), "folder": str(folder.root), "metric": METRIC, "mode": MODE,
        "settings": settings,
        "trials": sum(s["trials"] for s in settings), "stopped_early": sum(s["stopped_early"] for s in settings),
        "failed": sum(s["failed"] for s in settings), "optuna_storage": folder.optuna_storage,
        "mlflow": {"tracking_uri": store.uri, "artifact_root": store.artifact_root,
                   "experiment": space.experiment_name, "experiment_id": ml["experiment_id"],
                   "sweep_run_id": ml["sweep_run_id"], "ui": store.ui_command()}}
    atomic_write_text(folder.file(SUMMARY_JSON), json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(folder.file(SUMMARY_MD), summary_markdown(summary))
    T.finish_sweep_run(store, ml, summary, [folder.file(SUMMARY_JSON), folder.file(SUMMARY_MD)],
                       folder.root / "plots", f"{space.name}: best trial per noise setting")
    return summary
