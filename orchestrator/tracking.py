"""MLflow run tree (sweep → trial → fold), written by one process: the driver.

Trials never open the tracking store; Tune callbacks in the driver turn trial results into
MLflow writes. With one writer, an SQLite store never reports ``database is locked`` however
many trials run at once. Runs are found again by tags (``sweep.id``, ``sweep.trial_id``,
``sweep.fold``), so a resumed sweep re-attaches to its runs instead of duplicating them.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from orchestrator import keys
from orchestrator.statuses import COMPLETED, FAILED, budget_used, mlflow_status, trial_status

ROLE, SWEEP_ID, TRIAL_ID, FOLD = "sweep.role", "sweep.id", "sweep.trial_id", "sweep.fold"
NODE, NODES = "sweep.node_id", "sweep.node_ids"  # the Ray node a fold trains on; every node it trained on
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI
# MLflow ≥ 3.4 sorts experiments into GenAI and model training; a sweep's opens on its runs table
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_TAGS = {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
                   NOTE: "sweep: SchNet hyperparameter search; sweep run → trial runs → fold runs (fold models as artifacts)"}


def ui_link(uri: str, experiment_id: str) -> str:
    """How to open an experiment's runs table in the MLflow UI.

    MLflow 3's UI opens every experiment on its GenAI view unless the URL (or the sidebar's
    toggle, remembered by the browser) asks for the model-training view.
    """
    page = f"#/experiments/{experiment_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StoreNotFoundError(LookupError):
    """A read-only command named a SQLite tracking store that does not exist."""


def open_client(uri: str, *, read_only: bool = False, registry: bool = False):
    """An ``MlflowClient`` for ``uri`` without MLflow's schema-creation chatter on stderr.

    Args:
        uri: tracking URI (``sqlite:///…``, ``http://…``, a path).
        read_only: refuse a ``sqlite:///`` file that does not exist instead of creating an empty
            store (``sweep ensemble``/``status``/``list`` must not leave files behind).
        registry: also use ``uri`` as the model-registry URI.
    """
    import logging

    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # schema creation/migration chatter on a new SQLite store
        logging.getLogger(name).setLevel(logging.WARNING)
    if read_only and uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.exists():
            raise StoreNotFoundError(f"no MLflow store at {path} (tracking URI {uri}); run a sweep first or pass --tracking-uri")
    return MlflowClient(tracking_uri=uri, registry_uri=uri) if registry else MlflowClient(tracking_uri=uri)


class Store:
    """Thin helper over ``MlflowClient`` for the run tree."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.client = open_client(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
        if exp is not None and exp.tags.get(EXPERIMENT_KIND[0]) is None:
            self.client.set_experiment_tag(self.exp_id, *EXPERIMENT_KIND)

    def find(self, **tags: str) -> list:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.exp_id], filter_string=flt, max_results=10_000)

    def find_or_create(self, name: str, tags: dict[str, str]) -> str:
        key = {k: v for k, v in tags.items() if k in (ROLE, SWEEP_ID, TRIAL_ID, FOLD)}
        runs = self.find(**key)
        if runs:
            return runs[0].info.run_id
        return self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id

    def log(self, run_id: str, metrics: dict[str, float], step: int | None = None, params: dict[str, Any] | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        for i in range(0, max(len(ms), 1), 900):
            self.client.log_batch(run_id, metrics=ms[i : i + 900], params=ps if i == 0 else [])

    def end(self, run_id: str, status: str) -> None:
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, status=status)


class MlflowTracker(tune.Callback):
    """Tune callback that mirrors trials and their folds into MLflow (runs in the driver)."""

    def __init__(self, uri: str, experiment: str, sweep_id: str, parent_run_id: str, k: int,
                 time_budget: float | None = None) -> None:
        self.uri, self.experiment, self.sweep_id, self.parent, self.k = uri, experiment, sweep_id, parent_run_id, k
        self.time_budget, self.t0 = time_budget, time.time()
        self._store: Store | None = None
        self._runs: dict[str, tuple[str, list[str]]] = {}
        self._nodes: dict[str, list[str]] = {}
        self._moded: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks into its experiment state
        return {**self.__dict__, "_store": None, "_runs": {}, "_nodes": {}, "_moded": set()}

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
                                               {**base, ROLE: "fold", FOLD: str(i), PARENT: rid}) for i in range(self.k)]
            self.store.log(rid, {}, params=dict(trial.config))
            self._runs[trial.trial_id] = (rid, folds)
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        rid, folds = self.runs(trial)
        for run_id in (rid, *folds):  # an interrupted trial that --resume continues runs again
            if self.store.client.get_run(run_id).info.status == "KILLED":
                self.store.client.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        rid, folds = self.runs(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        trial_metrics = {k: v for k, v in result.items() if "/" not in k and (k in (
            "val_loss_mean", "val_loss_std", "train_loss_mean", "folds_stopped", "best_val_loss_mean") or keys.is_ensemble_mae(k))}
        self.store.log(rid, trial_metrics, step)
        if result.get("step_mode") and rid not in self._moded:  # how the stacked step runs, once per trial
            self._moded.add(rid)
            self.store.client.set_tag(rid, "sweep.step_mode", str(result["step_mode"])[:500])
        for i, fid in enumerate(folds):
            prefix = f"fold{i}/"
            self.store.log(fid, {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}, step)
            node = result.get(f"{prefix}node_id")
            if node and self._nodes.get(fid, [""])[-1] != node:  # first epoch, or the fold moved (a retry)
                seen = self._nodes.setdefault(fid, [])
                seen.append(node)
                self.store.client.set_tag(fid, NODE, node)
                self.store.client.set_tag(fid, NODES, ",".join(seen[-50:]))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        rid, folds = self.runs(trial)
        state = trial_status(False, trial.last_result, budget_used(self.time_budget, self.t0))
        if state == COMPLETED and trial.checkpoint is not None:
            self._log_final(trial, rid, folds)
        self.store.client.set_tag(rid, "sweep.status", state)
        for fid in folds:
            self.store.end(fid, mlflow_status(state))
        self.store.end(rid, mlflow_status(state))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        rid, folds = self.runs(trial)
        reason = error_reason(trial)
        for r in [rid, *folds]:
            self.store.client.set_tag(r, "sweep.error", reason[:5000])
        self.store.client.set_tag(rid, "sweep.status", FAILED)
        for fid in folds:
            self.store.end(fid, "FAILED")
        self.store.end(rid, "FAILED")

    def _log_final(self, trial, rid: str, folds: list[str]) -> None:
        from orchestrator.plots import learning_curve

        c = self.store.client
        with trial.checkpoint.as_directory() as d:
            d = Path(d)
            for i, fid in enumerate(folds):
                fd = d / f"fold_{i}"
                res = json.loads((fd / "result.json").read_text())
                self.store.log(fid, {keys.fold_metric(name, k): v for name, m in res["tests"].items() for k, v in m.items()} |
                               {"best_epoch": res["best_epoch"], "best_val_loss": res["best_val_loss"]})
                c.log_artifacts(fid, str(fd / "model"), "model")
            c.log_artifact(rid, str(d / "predictions.npz"))
            c.log_artifact(rid, str(d / "trial.json"))
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
