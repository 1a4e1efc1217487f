"""Where ``sweep ensemble`` finds an ensemble: a sweep in the MLflow store (its best trial's fold models and
stored predictions) or a registered model; the command's one-line error."""


from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.tracking import keys
from orchestrator.tracking.statuses import FINALISED
from orchestrator.tracking.store import (
    FOLD,
    PARENT,
    ROLE,
    SWEEP_ID,
    StoreNotFoundError,
    open_client,
)
from schnet_model.ensemble import Ensemble

MODEL_SUFFIX, ALIAS, ENSEMBLE_TAG = "-schnet-ensemble", "champion", keys.ENSEMBLE_MODEL
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class EnsembleCommandError(RuntimeError):
    """``sweep ensemble`` cannot go on (one line)."""


@dataclass
class Loaded:
    """An ensemble and where it came from."""

    ensemble: Ensemble
    description: str
    model_uri: str | None = None


def store_client(uri: str):
    try:
        return open_client(uri, read_only=True, registry=True)
    except StoreNotFoundError as e:
        raise EnsembleCommandError(str(e)) from e


def _finished_sweeps(client) -> list:
    exps = [e.experiment_id for e in client.search_experiments()]
    if not exps:
        return []
    runs = client.search_runs(exps, filter_string=f"tags.`{ROLE}` = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=10_000)
    return [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(keys.BEST_TRIAL_RUN)]


def find_sweep(client, uri: str, name: str | None):
    """The newest finished sweep (with a completed best trial) named ``name`` (sweep.id or spec name), or overall."""
    sweeps = _finished_sweeps(client)
    if name:
        sweeps = [r for r in sweeps if name in (r.data.tags.get(SWEEP_ID), r.data.tags.get(keys.SPEC_NAME))]
    if not sweeps:
        what = f"named {name!r} " if name else ""
        raise EnsembleCommandError(f"no finished sweep {what}with a completed trial in {uri} (see `sweep list`)")
    return sweeps[0]


def load_registered(uri: str, model_uri: str) -> Ensemble:
    """Download a registered ensemble (``models:/…``) and load it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as t:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=t, tracking_uri=uri)
        except MlflowException as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EnsembleCommandError(f"{model_uri}: cannot load from {uri} ({msg})") from e
        return Ensemble.load(local)


def download_artifact(client, run_id: str, path: str, dst: Path) -> Path:
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except (MlflowException, OSError) as e:
        raise EnsembleCommandError(f"run {run_id}: cannot download artifact {path!r} ({str(e).splitlines()[0]})") from e


def fold_model_dirs(client, trial_run, dst: Path) -> list[Path]:
    """Download the k fold models of a completed trial; [member_0, …] in fold order."""
    tid = trial_run.info.run_id
    if trial_run.data.tags.get(keys.STATUS) not in FINALISED:
        raise EnsembleCommandError(f"trial {trial_run.data.tags.get(keys.TRIAL_ID)} is "
                                   f"{trial_run.data.tags.get(keys.STATUS, trial_run.info.status)}: "
                                   "it has no fold models "
                                   f"(only {' or '.join(FINALISED)} trials have)")
    folds = client.search_runs([trial_run.info.experiment_id],
                               filter_string=f"tags.`{PARENT}` = '{tid}' and tags.`{ROLE}` = 'fold'", max_results=1000)
    folds = sorted(folds, key=lambda r: int(r.data.tags[FOLD]))
    if len(folds) < 2:
        raise EnsembleCommandError(f"trial run {tid} has {len(folds)} fold runs; an ensemble needs ≥ 2")
    return [download_artifact(client, f.info.run_id, "model", dst / f"fold_{f.data.tags[FOLD]}") for f in folds]


def stored_predictions(client, trial_run_id: str, tmp: Path) -> dict[str, np.ndarray] | None:
    """The trial's ``predictions.npz`` arrays (None when the run has none)."""
    try:
        path = download_artifact(client, trial_run_id, keys.PREDICTIONS, tmp / "pred")
    except EnsembleCommandError:
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


__all__ = ["ALIAS", "ENSEMBLE_TAG", "MODEL_SUFFIX", "RUN_ID", "EnsembleCommandError", "Loaded", "download_artifact",
           "find_sweep", "fold_model_dirs", "load_registered", "store_client", "stored_predictions"]
