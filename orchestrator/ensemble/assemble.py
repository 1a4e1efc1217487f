"""``sweep ensemble``: the best trial's k fold models as one calibrated ensemble; prediction and evaluation.

Sources (first match wins): a local directory (an ensemble directory, a downloaded MLflow model
of one, or a directory of ≥ 2 model directories), a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
URI, an MLflow run id (a sweep run, or a trial run for that trial's folds), a sweep name
(``sweep.id`` such as ``quickstart-20261124-214300``, or the spec name: its newest finished
sweep), or nothing: the newest finished sweep in the store.

Assembling from a sweep (once; later calls load the registered version recorded in the sweep
run's tag ``sweep.ensemble_model_uri`` unless ``--rebuild``):

1. the best trial's fold models (``sweep.best_trial_run_id`` → fold runs → artifact ``model``);
2. the sweep's dataset and split (``spec.json``, ``split.json``; the dataset's sha256 must match);
3. recalibration (:func:`schnet_model.calibration.fit_scale_oof`): every pool molecule is
   re-predicted by all k members; the member that held it out gives the out-of-fold error; the
   ensemble variance on held-out *inputs* gives E[std²] (the set held out of the dataset, else the
   test files); one scale per property; a sweep with no test molecule keeps scale 1 and says so;
4. a report on every named test set, raw vs recalibrated (Spearman ρ, miscalibration area,
   Gaussian NLL, coverage, reliability plot), logged to the sweep run;
5. the ensemble logged as an MLflow pyfunc (models from code: ``pyfunc.py``, the
   ensemble directory as artifact, the ``schnet_model`` package as code) under the sweep run,
   registered as ``<experiment>-schnet-ensemble``, alias ``champion`` moved to the new version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from orchestrator.ensemble.calibrate import MAX_CALIBRATION_MOLECULES, calibration_line, fit_calibration
from orchestrator.ensemble.report import build_report, reliability_plot, report_table
from orchestrator.ensemble.source import (
    ALIAS,
    ENSEMBLE_TAG,
    MODEL_SUFFIX,
    RUN_ID,
    EnsembleCommandError,
    Loaded,
    download_artifact,
    find_sweep,
    fold_model_dirs,
    load_registered,
    store_client,
    stored_predictions,
)
from orchestrator.spec.sweep import SweepSpec
from orchestrator.tracking import keys
from orchestrator.tracking.store import (
    PARENT,
    ROLE,
    SWEEP_ID,
)
from schnet_model.calibration import Calibration
from schnet_model.data.molecules import DataError
from schnet_model.ensemble import STD_DDOF, Ensemble, EnsembleError
from schnet_model.model_dir import ModelLoadError
from schnet_model.nn.family import size


@contextlib.contextmanager
def _no_signature_warning():
    """Drop MLflow's "Failed to infer model signature" warning: the pyfunc's input is ragged (one row
    per molecule with variable-length arrays, documented in :mod:`orchestrator.ensemble.pyfunc`),
    which a column signature cannot express; every other MLflow message still shows."""
    logger = logging.getLogger("mlflow.pyfunc")

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to infer model signature")

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def resolve(source: str | None, uri: str, rebuild: bool = False, console: Console | None = None,
            max_calibration: int = MAX_CALIBRATION_MOLECULES) -> Loaded:
    """The ensemble a ``sweep ensemble`` source names (see the module docstring)."""
    console = console or Console(stderr=True)
    if source and Path(source).exists():
        return Loaded(Ensemble.load(source), f"directory {source}")
    if source and source.startswith("models:/"):
        return Loaded(load_registered(uri, source), source, source)
    client = store_client(uri)
    trial_run = None
    if source and RUN_ID.match(source):
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(source)
        except MlflowException:
            run = None
        if run is not None:
            role = run.data.tags.get(ROLE)
            if role == "trial":
                trial_run, sweep_run = run, client.get_run(run.data.tags[PARENT])
            elif role == "sweep":
                sweep_run = run
            else:
                raise EnsembleCommandError(f"run {source} is a {role or 'non-sweep'} run; give a sweep or trial run id")
        else:
            sweep_run = find_sweep(client, uri, source)
    else:
        sweep_run = find_sweep(client, uri, source)
    tagged = sweep_run.data.tags.get(ENSEMBLE_TAG)
    if tagged and trial_run is None and not rebuild:
        try:
            return Loaded(load_registered(uri, tagged), f"{tagged} (sweep {sweep_run.data.tags.get(SWEEP_ID)})", tagged)
        except (EnsembleCommandError, EnsembleError) as e:
            console.print(f"note: {e}; assembling the ensemble again")
    return assemble(client, uri, sweep_run, trial_run=trial_run, console=console, max_calibration=max_calibration)


def assemble(client, uri: str, sweep_run, *, trial_run, console: Console,
             max_calibration: int = MAX_CALIBRATION_MOLECULES, register: bool = True) -> Loaded:
    """Build, calibrate, report, log and register the ensemble of a sweep's best (or given) trial."""
    from schnet_model.data.heldout import with_tests
    from schnet_model.data.splits import SplitManifest
    from schnet_model.files import sha256

    t0 = time.time()
    sid = sweep_run.info.run_id
    sweep_name = sweep_run.data.tags.get(SWEEP_ID, sid)
    if trial_run is None:
        trial_run = client.get_run(sweep_run.data.tags[keys.BEST_TRIAL_RUN])
    trial_id = trial_run.data.tags.get(keys.TRIAL_ID, trial_run.info.run_id)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        dirs = fold_model_dirs(client, trial_run, tmp / "folds")
        spec = SweepSpec.model_validate_json(download_artifact(client, sid, keys.SPEC_JSON, tmp).read_text())
        manifest = SplitManifest.from_json(download_artifact(client, sid, keys.SPLIT_JSON, tmp).read_text())
        meta = {"sweep": sweep_name, "sweep_run_id": sid, "trial_id": trial_id, "trial_run_id": trial_run.info.run_id,
                "experiment": client.get_experiment(sweep_run.info.experiment_id).name, "created": time.time()}
        try:
            ens = Ensemble.from_model_dirs(dirs, meta=meta)
        except (ModelLoadError, EnsembleError) as e:
            raise EnsembleCommandError(f"trial {trial_id}: fold models do not load ({str(e).splitlines()[0]})") from e
        console.print(f"sweep {sweep_name}: trial {trial_id}, {ens.k} members ({size(ens.config)}), "
                      f"energies in {ens.energy_unit}")
        try:
            joined = with_tests(spec.dataset)
        except DataError as e:
            raise EnsembleCommandError(f"cannot re-read the sweep's data to calibrate the ensemble: {e}") from e
        files = [(joined.dataset.path, sha256(joined.dataset.path), manifest.dataset_sha256)] + [
            (f.path, f.sha256, manifest.test_files[name].sha256)
            for name, f in joined.files.items() if name in manifest.test_files]
        for path, sha, want in files:  # the test files' sha256 were taken when with_tests read them
            if sha != want:
                raise EnsembleCommandError(f"{path}: sha256 {sha[:12]}… differs from the sweep's {want[:12]}…; "
                                           "the file changed since the sweep")
        data = joined.molecules
        if data.energy_unit != ens.energy_unit:
            raise EnsembleCommandError(f"dataset in {data.energy_unit} but the members were trained in "
                                       f"{ens.energy_unit}")
        held_out = "test" if len(manifest.test) else None  # the set held out of the dataset, drawn like the pool
        cal, props, _ = fit_calibration(ens, data, manifest.fold_pairs(), tests=manifest.test_sets(),
                                        held_out=held_out, max_molecules=max_calibration,
                                        stored=stored_predictions(client, trial_run.info.run_id, tmp))
        ens.calibration = cal
        reports = {name: build_report(pr, cal) for name, pr in props.items()}
        for name, report in reports.items():
            what = "held-out test set" if name == held_out else f"test file {name}"
            console.print(report_table(report, cal, f"{sweep_name} trial {trial_id}: {what} "
                                                    f"({len(manifest.test_sets()[name]):,} molecules), "
                                                    f"{ens.k}-member ensemble"))
        console.print(calibration_line(cal))
        ens_dir = ens.save(tmp / "ensemble")
        model_uri = None
        if register:
            model_uri = log_and_register(client, uri, sweep_run, ens_dir=ens_dir, reports=reports, cal=cal,
                                         energy_unit=ens.energy_unit, console=console)
    console.print(f"assembled in {time.time() - t0:.0f} s")
    return Loaded(ens, f"sweep {sweep_name} trial {trial_id}", model_uri)


def _code_copy(dst: Path) -> Path:
    """A clean copy of the ``schnet_model`` package (no caches) for the model's ``code_paths``."""
    import schnet_model

    src = Path(schnet_model.__file__).parent
    out = dst / "schnet_model"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def log_and_register(client, uri: str, sweep_run, *, ens_dir: Path, reports: dict, cal: Calibration,
                     energy_unit: str, console: Console) -> str:
    """Log report + pyfunc model under the sweep run, register it, move the ``champion`` alias; the model URI."""
    import mlflow
    import torch

    import orchestrator.ensemble.pyfunc as code

    sid = sweep_run.info.run_id
    experiment = client.get_experiment(sweep_run.info.experiment_id).name
    name = f"{experiment}{MODEL_SUFFIX}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    from orchestrator.tracking.store import Store

    store = Store(uri, experiment)
    flat = {k: v for set_name, r in reports.items() for k, v in r.flat(f"ensemble_{set_name}_").items()}
    store.log(sid, {**flat, "ensemble_energy_scale": cal.energy_scale, "ensemble_forces_scale": cal.forces_scale})
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for set_name, report in reports.items():  # plots/ensemble_reliability.png (test), …_NAME.png (test files)
            plot = tmp / f"ensemble_reliability{'' if set_name == 'test' else '_' + set_name}.png"
            reliability_plot(report, plot, f"{sweep_run.data.tags.get(SWEEP_ID)}: test set {set_name}")
            client.log_artifact(sid, str(plot), "plots")
        (tmp / "ensemble_calibration.json").write_text(json.dumps(
            {"calibration": cal.to_dict(), "test_sets": {n: {"metrics": r.metrics, "best_scale_here": r.best_scale,
                                                             "units": r.units} for n, r in reports.items()}},
            indent=2, default=float))
        client.log_artifact(sid, str(tmp / "ensemble_calibration.json"))
        code_dir = _code_copy(tmp)
        torch_req = torch.__version__.split("+")[0]
        with mlflow.start_run(run_id=sid), _no_signature_warning():
            info = mlflow.pyfunc.log_model(
                name="ensemble", python_model=str(Path(code.__file__)), artifacts={"ensemble": str(ens_dir)},
                code_paths=[str(code_dir)], registered_model_name=name,
                pip_requirements=[f"torch>={torch_req.rsplit('.', 1)[0]}", "numpy>=1.26", "pydantic>=2.6",
                                  "safetensors>=0.4", "ase>=3.23", "pandas", f"mlflow=={mlflow.__version__}"],
                metadata={"std_ddof": STD_DDOF, "energy_unit": energy_unit,
                          "format": "sweep-schnet-ensemble"})
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, ALIAS, version)
    model_uri = f"models:/{name}/{version}"
    client.set_tag(sid, ENSEMBLE_TAG, model_uri)
    console.print(f"MLflow: registered {name} version {version} (alias {ALIAS}); "
                  f"report and reliability plot on sweep run {sid}")
    return model_uri


__all__ = ["assemble", "log_and_register", "resolve"]
