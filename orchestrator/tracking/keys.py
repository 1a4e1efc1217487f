"""Names shared between modules: metric keys of test sets (a trial's, a fold's, the sweep's best).

Test sets are named (``test`` for the set held out of the dataset, the ``dataset.test_path`` names
for separate files); every metric of a test set starts with its name, so ``test`` keeps the keys
``test_energy_mae`` and ``test_ensemble_forces_mae`` that a sweep with one test set always had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# -- MLflow tags of the run tree (sweep run → trial runs → fold runs) ---------------------------------------
ROLE, SWEEP_ID, TRIAL_ID, FOLD = "sweep.role", "sweep.id", "sweep.trial_id", "sweep.fold"
NODE, NODES = "sweep.node_id", "sweep.node_ids"  # the Ray node a fold trains on; every node it trained on
PARENT = "mlflow.parentRunId"
NOTE = "mlflow.note.content"  # a run's description in the MLflow UI
# MLflow ≥ 3.4 sorts experiments into GenAI and model training; a sweep's opens on its runs table
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_TAGS = {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1],
                   NOTE: "sweep: SchNet hyperparameter search; sweep run → trial runs → fold runs "
                         "(fold models as artifacts)"}
STATUS, ERROR = "sweep.status", "sweep.error"  # a trial's end (orchestrator.tracking.statuses), and why it failed
BEST_TRIAL, BEST_TRIAL_RUN = "sweep.best_trial_id", "sweep.best_trial_run_id"  # on the sweep run
BASELINE_TRIAL = "sweep.baseline_trial_id"  # the paper configuration's trial in a budget plan, on the sweep run
BASELINE_FIDELITY = "sweep.baseline_fidelity"  # final (trained with all k folds) or screen (fold 0, not promoted)
SPEC_NAME, VERSION, GIT_COMMIT, DATASET_SHA = "sweep.name", "sweep.version", "sweep.git_commit", "sweep.dataset_sha256"
STEP_MODE = "sweep.step_mode"  # how a stacked trial's step runs
ENSEMBLE_MODEL = "sweep.ensemble_model_uri"  # the registered ensemble of a sweep

# -- artifacts ------------------------------------------------------------------------------------------------
SPEC_JSON, SPLIT_JSON, PREDICTIONS, TRIAL_JSON = "spec.json", "split.json", "predictions.npz", "trial.json"

# -- metrics --------------------------------------------------------------------------------------------------
PROPS = ("energy", "forces")


def fold_metric(test_set: str, metric: str) -> str:
    """A fold model's error on a test set: ``test_300K_forces_mae``."""
    return f"{test_set}_{metric}"


def ensemble_mae(test_set: str, prop: str) -> str:
    """The fold-mean (ensemble) MAE of a trial on a test set: ``test_300K_ensemble_forces_mae``."""
    return f"{test_set}_ensemble_{prop}_mae"


def best_mae(test_set: str, prop: str) -> str:
    """The best trial's ensemble MAE on a test set, on the sweep run: ``best_test_300K_forces_mae``."""
    return f"best_{test_set}_{prop}_mae"


def baseline_mae(test_set: str, prop: str) -> str:
    """The paper configuration's ensemble MAE on a test set, on the sweep run: ``baseline_test_forces_mae``."""
    return f"baseline_{test_set}_{prop}_mae"


def prediction(test_set: str, what: str) -> str:
    """A ``predictions.npz`` array of a test set: ``what`` is ``idx``, ``energy`` ([k, n]) or ``forces``
    ([k, n_atoms, 3])."""
    return f"{test_set}_{what}"


def maes_by_test_set(metrics: dict[str, Any], test_sets: list[str]) -> dict[str, dict[str, float | None]]:
    """``{test set: {"energy": MAE or None, "forces": MAE or None}}`` of a trial's metrics."""
    return {t: {p: metrics.get(ensemble_mae(t, p)) for p in PROPS} for t in test_sets}


def headline_set(metrics: dict[str, Any], best: bool = False) -> str | None:
    """The test set a one-row summary shows: ``test`` when the run has it, else the first named one, else None."""
    suffix = "_forces_mae" if best else "_ensemble_forces_mae"
    prefix = "best_" if best else ""
    names = sorted(k[len(prefix):-len(suffix)] for k in metrics
                   if k.startswith(prefix) and k.endswith(suffix) and (best or is_ensemble_mae(k)))
    return "test" if "test" in names else (names[0] if names else None)


def is_ensemble_mae(key: str) -> bool:
    return key.endswith(("_ensemble_energy_mae", "_ensemble_forces_mae"))


# -- a trial's report to Tune: one flat dict, fold values under "fold{i}/" (Tune's results are flat) ------------
FOLD_NODE = "node_id"  # a fold's value that is a tag (the Ray node), not a metric


@dataclass(frozen=True)
class TrialResult:
    """A trial's report to Tune: its own values and each fold's. Tune's results are flat, so :meth:`flat` carries
    fold ``i``'s values as ``fold{i}/KEY`` and :meth:`of` reads them back (the MLflow callback, in the driver)."""

    trial: dict[str, Any]
    folds: list[dict[str, Any]] = field(default_factory=list)

    def flat(self) -> dict[str, Any]:
        return {**self.trial, **{f"fold{i}/{k}": v for i, f in enumerate(self.folds) for k, v in f.items()}}

    @classmethod
    def of(cls, result: dict[str, Any]) -> TrialResult:
        """The report in a flat Tune result (Tune's own keys, e.g. ``training_iteration``, among the trial's)."""
        trial: dict[str, Any] = {}
        folds: dict[int, dict[str, Any]] = {}
        for k, v in result.items():
            head, sep, rest = k.partition("/")
            if sep and head.startswith("fold") and head[4:].isdigit():
                folds.setdefault(int(head[4:]), {})[rest] = v
            else:
                trial[k] = v
        return cls(trial, [folds.get(i, {}) for i in range(max(folds) + 1 if folds else 0)])

    def with_trial(self, **values: Any) -> TrialResult:
        """More of the trial's own values."""
        return TrialResult({**self.trial, **values}, self.folds)

    def with_folds(self, folds: list[dict[str, Any]]) -> TrialResult:
        """More values of each fold (``folds[i]`` joins fold ``i``'s)."""
        return TrialResult(self.trial, [{**a, **b} for a, b in zip(self.folds, folds, strict=True)])


__all__ = ["FOLD_NODE", "PROPS", "TrialResult", "baseline_mae", "best_mae", "ensemble_mae", "fold_metric",
           "headline_set", "is_ensemble_mae", "maes_by_test_set", "prediction"]
