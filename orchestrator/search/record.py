"""What the driver writes to MLflow itself at a sweep's end: statuses the callbacks could not set, the best trial,
the paper configuration's result, the dataset as an MLflow input."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from orchestrator.search.outcome import TrialSummary
from orchestrator.search.state import SweepState
from orchestrator.tracking import keys
from orchestrator.tracking.statuses import (
    INTERRUPTED,
    SCREENED,
    mlflow_status,
)
from orchestrator.tracking.store import NOTE, ROLE, SWEEP_ID, Store
from schnet_model.data.splits import SplitManifest

LOST = "lost"
LOST_REASON = ("the driver stopped before Tune's experiment state recorded this trial (it is saved periodically); "
               "on --resume the searcher sampled a replacement")


def reconcile(store: Store, name: str, trials: list[TrialSummary]) -> None:
    """No run left RUNNING and every trial run says what became of it: end (and label) any trial/fold run
    the callbacks could not (the driver died; the time budget or Ctrl-C ended the trial)."""
    state = {t.trial_id: t.status for t in trials}
    for run in store.find(**{SWEEP_ID: name}):
        role, trial_id = run.data.tags.get(ROLE), run.data.tags.get(keys.TRIAL_ID)
        if role == "trial" and trial_id in state and keys.STATUS not in run.data.tags:
            store.client.set_tag(run.info.run_id, keys.STATUS, state[trial_id])
        if run.info.status == "RUNNING" and role in ("trial", "fold"):
            if trial_id not in state:  # started, but the driver died before Tune's state recorded it
                store.client.set_tag(run.info.run_id, keys.STATUS, LOST)
                store.client.set_tag(run.info.run_id, keys.ERROR, LOST_REASON)
            store.end(run.info.run_id, mlflow_status(state[trial_id]) if trial_id in state else "KILLED")


def end_open_runs(store: Store, name: str) -> None:
    """After Tune itself failed: every trial and fold run still RUNNING ends KILLED, its trial labelled
    ``interrupted`` (``--resume`` continues it and marks it RUNNING again)."""
    for run in store.find(**{SWEEP_ID: name}):
        if run.info.status == "RUNNING" and run.data.tags.get(ROLE) in ("trial", "fold"):
            if run.data.tags.get(ROLE) == "trial":
                store.client.set_tag(run.info.run_id, keys.STATUS, INTERRUPTED)
            store.end(run.info.run_id, "KILLED")


def log_plan(store: Store, name: str, parent: str, state: SweepState) -> None:
    """A budget plan's record in MLflow: each rung's planned and measured seconds on the sweep run, and each screened
    trial's estimated and measured fold-epoch seconds and extrapolated loss on its run."""
    metrics = {f"{rung}_{which}_seconds": v[f"{which}_s"] for rung, v in state.rungs.items()
               for which in ("planned", "measured")}
    rows = state.screened_costs
    if rows:
        ok = [r for r in rows if r["measured_epoch_s"] > 0]
        for key, col in (("cost_model_median_error", "estimated_epoch_s"),
                         ("cost_model_median_error_calibrated", "calibrated_epoch_s")):
            err = [abs(r[col] / r["measured_epoch_s"] - 1) for r in ok if col in r]
            metrics[key] = float(np.median(err)) if err else np.nan
    store.log(parent, metrics)
    by_trial = {r["trial_id"]: r for r in rows}
    for run in store.find(**{SWEEP_ID: name, ROLE: "trial"}):
        r = by_trial.get(run.data.tags.get(keys.TRIAL_ID))
        if r is not None:
            store.log(run.info.run_id, {"epoch_seconds_estimated": r["estimated_epoch_s"],
                                        "epoch_seconds_measured": r["measured_epoch_s"]}
                      | ({"screen_score": r["predicted_val_loss"]} if r.get("predicted_val_loss") is not None else {}))


def log_best(store: Store, parent: str, name: str, *, best: TrialSummary, data, manifest: SplitManifest) -> None:
    """Best trial: tags on the sweep run, parity plots on the test set."""
    from orchestrator.tracking.plots import parity

    c = store.client
    runs = store.find(**{keys.TRIAL_ID: best.trial_id, ROLE: "trial"})
    c.set_tag(parent, keys.BEST_TRIAL, best.trial_id)
    if runs:
        c.set_tag(parent, keys.BEST_TRIAL_RUN, runs[0].info.run_id)
    unit = data.energy_unit
    sets = manifest.test_sets()
    errs = "".join(f"; its {len(sets[t]):,}-molecule {t} set: energy MAE {m['energy']:.4g} {unit}"
                   + ("" if m["forces"] is None else f", forces MAE {m['forces']:.4g} {unit}/Å")
                   for t, m in best.tests.items() if m["energy"] is not None)
    c.set_tag(parent, NOTE, f"Best trial {best.trial_id} ({', '.join(f'{k}={v}' for k, v in best.params.items())}): "
                            f"CV validation loss {best.val_loss_mean:.4g}{errs or '; ' + manifest.describe_tests()} "
                            f"(fold-mean ensemble). Assemble its fold models into the ensemble with calibrated std: "
                            f"`sweep ensemble {name}`.")
    store.log(parent, {"best_val_loss_mean": best.val_loss_mean or np.nan,
                       **{keys.best_mae(t, p): v for t, m in best.tests.items() for p, v in m.items()
                          if v is not None}})
    if best.checkpoint is None:
        return
    with best.checkpoint.as_directory() as d, np.load(Path(d) / keys.PREDICTIONS) as z:  # local or s3://
        pred = {k: z[k] for k in z.files}
    with tempfile.TemporaryDirectory() as t:
        for name in sets:  # parity plots per test set: plots/parity_energy.png (test), plots/parity_energy_NAME.png
            test, tag = data.subset(pred[keys.prediction(name, "idx")]), "" if name == "test" else f"_{name}"
            parity(test.E, pred[keys.prediction(name, "energy")].mean(0), unit, f"energy ({name})",
                   Path(t) / f"parity_energy{tag}.png")
            c.log_artifact(parent, str(Path(t) / f"parity_energy{tag}.png"), "plots")
            if keys.prediction(name, "forces") in pred:
                parity(test.F.ravel(), pred[keys.prediction(name, "forces")].mean(0).ravel(), f"{unit}/Å",
                       f"force components ({name})", Path(t) / f"parity_forces{tag}.png")
                c.log_artifact(parent, str(Path(t) / f"parity_forces{tag}.png"), "plots")


def log_dataset(store: Store, parent: str, data, manifest: SplitManifest) -> None:
    """The dataset as an MLflow dataset input of the sweep run: name, sha256 digest, source, units, sizes."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"molecules": len(data), "atoms_min": int(data.n_atoms.min()), "atoms_max": int(data.n_atoms.max()),
               "elements": data.elements, "energy_unit": data.energy_unit, "force_unit": data.force_unit,
               "length_unit": "Å", "test": len(manifest.test), "folds": len(manifest.folds),
               "test_files": {name: {"path": f.path, "sha256": f.sha256, "molecules": len(f.idx)}
                              for name, f in manifest.test_files.items()}}
    ds = Dataset(name=Path(manifest.dataset).name, digest=manifest.dataset_sha256[:36], source_type="local",
                 source=json.dumps({"uri": manifest.dataset}), profile=json.dumps(profile))
    store.client.log_inputs(parent, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", "training")])])


def log_baseline(store: Store, parent: str, baseline: TrialSummary, best: TrialSummary | None) -> None:
    """The paper configuration's result on the sweep run (full fidelity, or its screening when it was not promoted),
    next to the best trial's."""
    store.client.set_tag(parent, keys.BASELINE_TRIAL, baseline.trial_id)
    store.client.set_tag(parent, keys.BASELINE_FIDELITY, "screen" if baseline.status == SCREENED else "final")
    store.log(parent, {keys.baseline_mae(t, p): v for t, m in baseline.tests.items() for p, v in m.items()
                       if v is not None}
              | ({"baseline_val_loss_mean": baseline.val_loss_mean} if baseline.val_loss_mean is not None else {}))
