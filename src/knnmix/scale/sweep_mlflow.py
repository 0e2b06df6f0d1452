"""MLflow logging of sweeps: a Tune callback on the driver (:class:`TrialLogger`) and the noise settings' and sweep's
runs, with their plots. One process writes to the store: the driver. A sweep is three levels of nested runs: the
sweep, one per noise setting, one per trial (what each holds: docs/sweeps.md). The store and the run helpers are
:mod:`knnmix.tracking`'s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS

from knnmix.engine.checkpoint import BEST_MODEL, CONFIG, LABEL_ISSUES, LABEL_ISSUES_PLOT, SUMMARY
from knnmix.plots import plot_best_per_noise, plot_clean_prob_histogram, plot_importances, plot_learning_curves
from knnmix.scale import ray_env
from knnmix.spaces import METRIC, SETTING_KEY
from knnmix.sweep_folder import best_record, reported, run_name, sampled_values, study_importances
from knnmix.tracking import (KIND_TAG, PARENT_TAG, Store, create_run, log_epochs, log_files, log_model, log_params,
                             log_run_folder, log_totals, register_once)

TRIAL_TAG = "knnmix.trial_id"
OUTCOME_TAG = "knnmix.outcome"  # completed | stopped_early | failed
FINALIZED_TAG = "knnmix.finalized"
TUNE_KEYS = {"done", "trial_id", "experiment_tag", "should_checkpoint", *AUTO_RESULT_KEYS}  # Tune's, not the engine's


def find_trial_run(client: Any, exp_id: str, trial_id: str) -> Any:
    found = client.search_runs([exp_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'", max_results=1)
    return found[0] if found else None


def last_epoch(trial: Any) -> int:
    """The epoch of the last result Tune saw of ``trial`` (0 before its first)."""
    return int((trial.last_result or {}).get("epoch", 0) or 0)


def open_sweep_runs(store: Store, space: Any, settings: list[Any], ml: dict[str, Any], space_file: Path,
                    experiment_id: str) -> dict:
    """The sweep's run and one run per noise setting in experiment ``experiment_id``; ids kept in ``ml`` (the state)."""
    ml["experiment_id"] = experiment_id
    tags = {KIND_TAG: "sweep", **({"mlflow.note.content": space.description} if space.description else {})}
    ml["sweep_run_id"] = create_run(store, ml["experiment_id"], space.name, tags, reuse=ml.get("sweep_run_id"))
    runs = ml.setdefault("settings", {})
    for s in settings:
        tags = {KIND_TAG: "noise_setting", "knnmix.noise": s.spec}
        runs[s.slug] = create_run(store, ml["experiment_id"], s.spec, tags, parent=ml["sweep_run_id"],
                                  reuse=runs.get(s.slug))
    client = store.client()
    log_params(client, ml["sweep_run_id"], {
        "name": space.name, "trials": space.trials, "seed": space.seed, "metric": space.metric,
        "noise": ",".join(s.spec for s in settings), "base.config": space.base.config,
        **{f"asha.{k}": v for k, v in space.to_dict()["asha"].items()},
        **{f"params.{k}": p.describe() for k, p in space.params.items()},
        **{f"base.set.{k}": v for k, v in space.base.set.items()}})
    client.log_artifact(ml["sweep_run_id"], str(space_file))
    return ml


@contextmanager
def ended_on_failure(store: Store, ml: dict[str, Any]) -> Iterator[None]:
    """MLflow's convention for runs that stop unfinished (as ``mlflow.start_run`` has it): after Ctrl+C or SIGTERM
    the sweep's run, its noise settings' runs and its trials' runs still RUNNING become KILLED, after an error
    FAILED (they stayed RUNNING in the UI for good); also when SIGTERM stopped Ray too and the process ends from
    :mod:`ray_env`'s watchdog. ``--resume`` sets them running again."""
    killed = partial(mark_unfinished, store, ml, "KILLED")
    ray_env.BEFORE_EXIT.append(killed)
    try:
        yield
    except BaseException as e:
        mark_unfinished(store, ml, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        ray_env.BEFORE_EXIT.remove(killed)


def mark_unfinished(store: Store, ml: dict[str, Any], status: str) -> None:
    """End the sweep's runs still RUNNING with ``status``; never raises (the error that stopped the sweep is told)."""
    with suppress(Exception):
        client = store.client()
        parents = list(ml.get("settings", {}).values())
        for p in parents:
            for run in child_runs(client, ml["experiment_id"], p, "attributes.status = 'RUNNING'"):
                client.set_terminated(run.info.run_id, status=status)
        for rid in [*parents, ml.get("sweep_run_id")]:
            if rid and client.get_run(rid).info.status == "RUNNING":
                client.set_terminated(rid, status=status)


def child_runs(client: Any, experiment_id: str, parent: str, where: str = "") -> list[Any]:
    """The runs nested under run ``parent`` (all of them); ``where``: more of MLflow's search filter."""
    return client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'" + (f" and {where}" if where else ""),
                              max_results=50000)


#: Where each running sweep prints its trials' lines, by sweep folder (set by run_sweep for the call). Not part of
#: the TrialLogger, which Tune pickles with the experiment and gives back on --resume as it was saved.
ECHOES: dict[str, Callable[[str], None]] = {}


class TrialLogger(Callback):
    """Logs every trial as an MLflow run nested under its noise setting's run (a Tune callback on the driver) and
    prints a line for each trial that ends (through ``ECHOES[root]``).

    Picklable (Tune saves it with the experiment). A restored sweep finds each trial's run again by its
    ``knnmix.trial_id`` tag, so a trial is never logged twice.
    """

    def __init__(self, *, store: Store, experiment_id: str, parents: dict[str, str], specs: dict[str, str],
                 root: str, total: int) -> None:
        self.store, self.experiment_id, self.parents, self.specs = store, experiment_id, parents, specs
        self.root, self.total = root, total
        self._runs: dict[str, str] = {}
        self._epochs: dict[str, set[int]] = {}
        self._done: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # without the client (made again on first use)
        return {k: v for k, v in self.__dict__.items() if k != "client"}

    def setup(self, **info: Any) -> None:
        """At the start of every ``Tuner.fit``, a restored one too (Tune gives this callback back as saved when the
        sweep started, with no trial done): the trials that ended before, so that the count goes on from them."""
        for parent in self.parents.values():
            self._done.update(r.data.tags[TRIAL_TAG] for r in child_runs(self.client, self.experiment_id, parent)
                              if r.data.tags.get(OUTCOME_TAG, "failed") != "failed" and r.data.tags.get(TRIAL_TAG))

    @cached_property
    def client(self) -> Any:
        """One client for the callback's life (it is used several times per trial result)."""
        return self.store.client()

    def folder(self, trial: Any) -> Path:
        return Path(self.root) / trial.config[SETTING_KEY] / "trials" / trial.trial_id

    def name(self, trial: Any) -> str:
        return run_name(self.specs[trial.config[SETTING_KEY]], sampled_values(trial.config))

    def run_id(self, trial: Any) -> str | None:
        """The trial's run (found or created); ``None`` once the trial's run is complete."""
        tid = trial.trial_id
        if tid in self._done:
            return None
        if tid not in self._runs:
            found = find_trial_run(self.client, self.experiment_id, tid)
            outcome = found and found.data.tags.get(OUTCOME_TAG)
            if outcome and outcome != "failed":
                self._done.add(tid)
                return None
            self._runs[tid] = found.info.run_id if found else self._create_run(trial)
            if found and found.info.status != "RUNNING":  # KILLED when an interrupted sweep stopped it
                self.client.update_run(found.info.run_id, status="RUNNING")
            if outcome:  # a failed trial that --resume (resume_errored) runs again
                self.client.delete_tag(found.info.run_id, OUTCOME_TAG)
            self._epochs[tid] = {int(m.step) for m in self.client.get_metric_history(self._runs[tid], METRIC)}
        return self._runs[tid]

    def _create_run(self, trial: Any) -> str:
        slug = trial.config[SETTING_KEY]
        tags = {KIND_TAG: "trial", TRIAL_TAG: trial.trial_id, "knnmix.noise": self.specs[slug],
                "knnmix.run_folder": str(self.folder(trial))}
        rid = create_run(self.store, self.experiment_id, self.name(trial), tags, parent=self.parents[slug])
        log_params(self.client, rid, {f"sampled.{k}": v for k, v in sampled_values(trial.config).items()})
        return rid

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def log_new_epochs(self, trial: Any, rid: str, records: list[dict[str, Any]]) -> None:
        """Log the epochs of ``records`` not logged yet; before the first, the run folder's config and data."""
        logged = self._epochs[trial.trial_id]
        if not logged:
            log_run_folder(self.client, rid, self.folder(trial))
        if new := [r for r in records if int(r["epoch"]) not in logged]:
            logged.update(log_epochs(self.client, rid, new))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self.run_id(trial)
        if rid is not None and "epoch" in result:
            self.log_new_epochs(trial, rid, [{k: v for k, v in result.items() if k not in TUNE_KEYS}])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, failed=True)

    def _finish(self, trial: Any, *, failed: bool) -> None:
        rid = self.run_id(trial)
        if rid is None:
            return
        folder, last = self.folder(trial), last_epoch(trial)
        records = reported(folder, last)
        self.log_new_epochs(trial, rid, records)  # with the epochs reported while the driver was down
        outcome = "failed" if failed else ("completed" if (folder / SUMMARY).exists() else "stopped_early")
        best = best_record(records) or {}
        log_totals(self.client, rid, {"epochs_run": last, "best_val_acc": best.get(METRIC),
                                      "test_acc_at_best_val": best.get("test_acc")})
        self.client.set_tag(rid, OUTCOME_TAG, outcome)
        if not failed:  # its setting is finalized (again, when --resume reran a failed trial of a finalized one)
            self.client.set_tag(self.parents[trial.config[SETTING_KEY]], FINALIZED_TAG, "false")
        self.client.set_terminated(rid, status="FAILED" if failed else "FINISHED")
        self._done.add(trial.trial_id)
        if echo := ECHOES.get(self.root):
            v = f"{best[METRIC]:.2f}" if best else "n/a"
            echo(f"  trial {len(self._done):>3}/{self.total} {outcome:<13} after {last:>3} epochs, best val "
                 f"{v:>6}: {self.name(trial)}")


def finish_setting_run(store: Store, ml: dict[str, Any], setting: Any, entry: dict[str, Any], trials: list,
                       best: Any, plots: Path, optuna_storage: str, register: str | None) -> None:
    """A noise setting's run: learning curves, importances from its Optuna study, the best trial's audit, the best
    model (logged on the best trial's run, with ``mlflow.pytorch``). Done once: a resumed sweep does not log
    twice. Adds to the setting's summary ``entry`` the best trial's run id, ``importances`` and ``model_uri``."""
    client, run_id = store.client(), ml["settings"][setting.slug]
    for lost in child_runs(client, ml["experiment_id"], run_id, "attributes.status = 'RUNNING'"):  # all its trials
        client.set_terminated(lost.info.run_id, status="KILLED")  # ended: a trial started just before a kill
    run = client.get_run(run_id)
    if best is not None:
        found = find_trial_run(client, ml["experiment_id"], best.trial_id)
        entry["best_mlflow_run_id"] = entry["best"]["mlflow_run_id"] = found.info.run_id if found else None
    if run.data.tags.get(FINALIZED_TAG) == "true":
        entry["model_uri"] = run.data.tags.get("knnmix.model_uri")
        entry["importances"] = json.loads(run.data.tags.get("knnmix.importances", "null") or "null")
        if register and entry["model_uri"] and entry.get("best_mlflow_run_id"):  # --register on a finished sweep
            register_once(store, entry["model_uri"], entry["best_mlflow_run_id"], register)
        client.set_terminated(run_id, status="FINISHED")  # open_sweep_runs set it RUNNING again
        return
    plots.mkdir(parents=True, exist_ok=True)
    log_params(client, run_id, {"noise.spec": setting.spec, **{f"set.{k}": v for k, v in setting.set.items()}})
    curves = {t.trial_id: t.records for t in trials if t.records}
    if curves:
        client.log_artifact(run_id, str(plot_learning_curves(plots / "learning_curves.png", curves,
                                                              best.trial_id if best else None, setting.spec)), "plots")
    entry["importances"], counted = study_importances(optuna_storage, entry["study"])
    if entry["importances"]:
        client.log_dict(run_id, entry["importances"], "param_importances.json")
        title = f"{setting.spec}: parameter importances from {counted} trial{'s' * (counted != 1)}"
        client.log_artifact(run_id, str(plot_importances(plots / "param_importances.png", entry["importances"],
                                                          title)), "plots")
    totals = {k: entry[k] for k in ("trials", "completed", "stopped_early", "failed")}
    before = run.data.tags.get("knnmix.best_trial")  # when finalized again
    if best is not None:
        if before not in (None, best.trial_id):
            with suppress(Exception):  # MlflowException: that run has no such tag
                client.delete_tag(find_trial_run(client, ml["experiment_id"], before).info.run_id, "knnmix.best")
        client.set_tag(run_id, "knnmix.best_trial", best.trial_id)
        totals.update(best_val_acc=entry["best"]["val_acc"], best_test_acc=entry["best"]["test_acc"])
        log_files(client, run_id, best.run_folder, (LABEL_ISSUES, LABEL_ISSUES_PLOT, CONFIG), "best_trial")
        hist = plot_clean_prob_histogram(plots / "clean_prob_histogram.png", best.run_folder / LABEL_ISSUES,
                                         f"{setting.spec}: best trial {best.trial_id}")
        if hist is not None:
            client.log_artifact(run_id, str(hist), "plots")
        if entry["best_mlflow_run_id"]:
            client.set_tag(entry["best_mlflow_run_id"], "knnmix.best", "true")
            if before == best.trial_id and run.data.tags.get("knnmix.model_uri"):  # logged before: not twice
                entry["model_uri"] = run.data.tags["knnmix.model_uri"]
                if register:
                    register_once(store, entry["model_uri"], entry["best_mlflow_run_id"], register)
            elif (best.run_folder / BEST_MODEL).exists():
                entry["model_uri"] = log_model(store, entry["best_mlflow_run_id"], best.run_folder / BEST_MODEL,
                                               register=register)
                client.set_tag(run_id, "knnmix.model_uri", entry["model_uri"])
    log_totals(client, run_id, totals)
    client.set_tag(run_id, "knnmix.importances", json.dumps(entry["importances"])[:5000])
    if entry.get("warnings"):  # what its trials' set-up warned of: {message: trials}
        client.log_dict(run_id, entry["warnings"], "trial_warnings.json")
    client.set_tag(run_id, FINALIZED_TAG, "true")
    client.set_terminated(run_id, status="FINISHED")


def finish_sweep_run(store: Store, ml: dict[str, Any], summary: dict[str, Any], files: list[Path], plots: Path,
                     title: str) -> None:
    client = store.client()
    run_id = ml["sweep_run_id"]
    plots.mkdir(exist_ok=True)
    client.log_artifact(run_id, str(plot_best_per_noise(plots / "best_per_noise.png", summary["settings"], title)),
                        "plots")
    for f in files:
        client.log_artifact(run_id, str(f))
    totals = {f"best_{key}.{s['slug']}": s["best"][key] for s in summary["settings"] if s["best"]
              for key in ("val_acc", "test_acc")}
    log_totals(client, run_id, totals)  # (a resumed finished sweep: each total once)
    client.set_terminated(run_id, status="FAILED" if summary["failed"] else "FINISHED")
