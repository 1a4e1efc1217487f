"""MLflow run tree (sweep → trial → fold), written by one process: the driver.

Trials never open the tracking store; Tune callbacks in the driver turn trial results into
MLflow writes. With one writer, an SQLite store never reports ``database is locked`` however
many trials run at once. Runs are found again by tags (``sweep.id``, ``sweep.trial_id``,
``sweep.fold``), so a resumed sweep re-attaches to its runs instead of duplicating them. The
store itself (tags, client, :class:`Store`) is :mod:`orchestrator.tracking.store`, free of Ray.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator.tracking import keys
from orchestrator.tracking.statuses import FAILED, FINALISED, INTERRUPTED, budget_used, mlflow_status, trial_status
from orchestrator.tracking.store import FOLD, NODE, NODES, PARENT, ROLE, SWEEP_ID, TRIAL_ID, Store


class MlflowTracker(tune.Callback):
    """Tune callback that mirrors trials and their folds into MLflow (runs in the driver)."""

    def __init__(self, uri: str, experiment: str, *, sweep_id: str, parent_run_id: str, k: int,
                 time_budget: float | None = None) -> None:
        self.uri, self.experiment, self.sweep_id, self.parent, self.k = uri, experiment, sweep_id, parent_run_id, k
        self.time_budget, self.t0 = time_budget, time.time()
        self._store: Store | None = None
        self._runs: dict[str, tuple[str, list[str]]] = {}
        self._nodes: dict[str, list[str]] = {}
        self._moded: set[str] = set()
        self._recorded: set[str] = set()  # trials MLflow already holds as completed (a resume after a kill)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_store": None, "_runs": {}, "_nodes": {}, "_moded": set(), "_recorded": set()}

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.uri, self.experiment)
        return self._store

    def runs(self, trial) -> tuple[str, list[str]]:
        """(trial run id, fold run ids), created once, found again after a resume."""
        if trial.trial_id not in self._runs:
            base = {SWEEP_ID: self.sweep_id, TRIAL_ID: trial.trial_id}
            rid = self.store.find_or_create(f"trial {trial.trial_id}", {**base, ROLE: "trial", PARENT: self.parent})
            folds = [self.store.find_or_create(f"trial {trial.trial_id} fold {i}",
                                               {**base, ROLE: "fold", FOLD: str(i), PARENT: rid})
                     for i in range(self.k)]
            run = self.store.client.get_run(rid)
            if run.info.status == "FINISHED" and run.data.tags.get(keys.STATUS) in FINALISED:
                self._recorded.add(trial.trial_id)  # MLflow holds it as completed: the record, not written again
            else:
                self.store.log(rid, {}, params=dict(trial.config))
            self._runs[trial.trial_id] = (rid, folds)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        rid, folds = self.runs(trial)
        # a sweep run no longer RUNNING was ended by a SIGTERM while Tune stops (a trial Tune retries after the
        # job's Ray died with it): its trial stays interrupted; otherwise a trial --resume continues runs again
        stopping = self.store.client.get_run(self.parent).info.status != "RUNNING"
        for run_id in (rid, *folds):
            status = self.store.client.get_run(run_id).info.status
            if stopping and status == "RUNNING":
                self.store.end(run_id, "KILLED")
            elif not stopping and status == "KILLED":
                self.store.client.update_run(run_id, status="RUNNING")
        if stopping:
            self.store.client.set_tag(rid, keys.STATUS, INTERRUPTED)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        rid, folds = self.runs(trial)
        if trial.trial_id in self._recorded:  # its final result, re-reported on --resume (see trial.py)
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        report = keys.TrialResult.of(result)
        trial_metrics = {k: v for k, v in report.trial.items() if k in (
            "val_loss_mean", "val_loss_std", "train_loss_mean", "folds_stopped", "best_val_loss_mean", "screen_score")
            or keys.is_ensemble_mae(k)}
        self.store.log(rid, trial_metrics, step)
        if result.get("step_mode") and rid not in self._moded:  # how the stacked step runs, once per trial
            self._moded.add(rid)
            self.store.client.set_tag(rid, keys.STEP_MODE, str(result["step_mode"])[:500])
        for i, fid in enumerate(folds):
            fold = dict(report.folds[i]) if i < len(report.folds) else {}
            node = fold.pop(keys.FOLD_NODE, "")
            self.store.log(fid, fold, step)
            if node and self._nodes.get(fid, [""])[-1] != node:  # first epoch, or the fold moved (a retry)
                seen = self._nodes.setdefault(fid, [])
                seen.append(node)
                self.store.client.set_tag(fid, NODE, node)
                self.store.client.set_tag(fid, NODES, ",".join(seen[-50:]))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        rid, folds = self.runs(trial)
        if trial.trial_id in self._recorded:
            return
        state = trial_status(False, trial.last_result, budget_used(self.time_budget, self.t0))
        if state in FINALISED and trial.checkpoint is not None:
            self._log_final(trial, rid, folds)
        self.store.client.set_tag(rid, keys.STATUS, state)
        for fid in folds:
            self.store.end(fid, mlflow_status(state))
        self.store.end(rid, mlflow_status(state))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        rid, folds = self.runs(trial)
        reason = error_reason(trial)
        for r in [rid, *folds]:
            self.store.client.set_tag(r, keys.ERROR, reason[:5000])
        self.store.client.set_tag(rid, keys.STATUS, FAILED)
        for fid in folds:
            self.store.end(fid, "FAILED")
        self.store.end(rid, "FAILED")

    def _log_final(self, trial, rid: str, folds: list[str]) -> None:
        from orchestrator.tracking.plots import learning_curve

        c = self.store.client
        with trial.checkpoint.as_directory() as d:
            d = Path(d)
            for i, fid in enumerate(folds):
                fd = d / f"fold_{i}"
                res = json.loads((fd / "result.json").read_text())
                self.store.log(fid, {keys.fold_metric(name, k): v for name, m in res["tests"].items()
                                     for k, v in m.items()} |
                               {"best_epoch": res["best_epoch"], "best_val_loss": res["best_val_loss"]} |
                               res.get("offset_refit", {}))
                c.log_artifacts(fid, str(fd / "model"), "model")
            c.log_artifact(rid, str(d / keys.PREDICTIONS))
            c.log_artifact(rid, str(d / keys.TRIAL_JSON))
        hist_mean = c.get_metric_history(rid, "val_loss_mean")
        hist_std = {m.step: m.value for m in c.get_metric_history(rid, "val_loss_std")}
        with tempfile.TemporaryDirectory() as t:
            path = Path(t) / "learning_curve.png"
            steps = sorted({m.step: m.value for m in hist_mean}.items())
            learning_curve([s for s, _ in steps], [v for _, v in steps], [hist_std.get(s, 0.0) for s, _ in steps],
                           f"trial {trial.trial_id}", path)
            c.log_artifact(rid, str(path), "plots")


def error_reason(trial) -> str:
    """The last line of a failed trial's error (e.g. the fold, epoch and step of a NaN)."""
    try:
        path = getattr(trial, "error_file", None)
        text = Path(path).read_text() if path and Path(path).exists() else str(trial.get_error())
    except (OSError, AttributeError):
        text = "unknown error"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "non-finite" in ln:
            return ln
    return lines[-1] if lines else "unknown error"
