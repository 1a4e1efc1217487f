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
5. the ensemble logged as an MLflow pyfunc (models from code: ``pyfunc_ensemble.py``, the
   ensemble directory as artifact, the ``schnet_model`` package as code) under the sweep run,
   registered as ``<experiment>-schnet-ensemble``, alias ``champion`` moved to the new version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from orchestrator.ensemble.io import AtomicFiles, Writer, convert_refs, csv_path, read_chunks
from orchestrator.ensemble.report import PropertyErrors, build_report, reliability_plot, report_table
from orchestrator.spec.sweep import SweepSpec, TrackingConfig
from orchestrator.tracking import keys
from orchestrator.tracking.statuses import FINALISED
from orchestrator.tracking.store import (
    FOLD,
    PARENT,
    ROLE,
    SWEEP_ID,
    StoreNotFoundError,
    no_artifact_progress_bar,
    open_client,
)
from schnet_model.calibration import Calibration, fit_scale_oof
from schnet_model.data.molecules import DataError, Molecules
from schnet_model.ensemble import STD_DDOF, EnsembleError, SchNetEnsemble
from schnet_model.model_dir import ModelLoadError
from schnet_model.units import UnitError, canonical_energy_unit

MODEL_SUFFIX, ALIAS, ENSEMBLE_TAG = "-schnet-ensemble", "champion", keys.ENSEMBLE_MODEL
MAX_CALIBRATION_MOLECULES = 20_000  # test molecules used for E[std²] and the report (random subset beyond)
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class EnsembleCommandError(RuntimeError):
    """``sweep ensemble`` cannot go on (one line)."""


@dataclass
class Loaded:
    """An ensemble and where it came from."""

    ensemble: SchNetEnsemble
    description: str
    model_uri: str | None = None


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


# -- finding sweeps --------------------------------------------------------------------------------
def _client(uri: str):
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


# -- loading ----------------------------------------------------------------------------------------
def load_registered(uri: str, model_uri: str) -> SchNetEnsemble:
    """Download a registered ensemble (``models:/…``) and load it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as t:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=t, tracking_uri=uri)
        except MlflowException as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EnsembleCommandError(f"{model_uri}: cannot load from {uri} ({msg})") from e
        return SchNetEnsemble.load(local)


def resolve(source: str | None, uri: str, rebuild: bool = False, console: Console | None = None,
            max_calibration: int = MAX_CALIBRATION_MOLECULES) -> Loaded:
    """The ensemble a ``sweep ensemble`` source names (see the module docstring)."""
    console = console or Console(stderr=True)
    if source and Path(source).exists():
        return Loaded(SchNetEnsemble.load(source), f"directory {source}")
    if source and source.startswith("models:/"):
        return Loaded(load_registered(uri, source), source, source)
    client = _client(uri)
    trial_run = None
    if source and _RUN_ID.match(source):
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
    return assemble(client, uri, sweep_run, trial_run, console, max_calibration)


# -- assembling from a sweep ---------------------------------------------------------------------------
def _download(client, run_id: str, path: str, dst: Path) -> Path:
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
                                   f"{trial_run.data.tags.get(keys.STATUS, trial_run.info.status)}: it has no fold models "
                                   f"(only {' or '.join(FINALISED)} trials have)")
    folds = client.search_runs([trial_run.info.experiment_id],
                               filter_string=f"tags.`{PARENT}` = '{tid}' and tags.`{ROLE}` = 'fold'", max_results=1000)
    folds = sorted(folds, key=lambda r: int(r.data.tags[FOLD]))
    if len(folds) < 2:
        raise EnsembleCommandError(f"trial run {tid} has {len(folds)} fold runs; an ensemble needs ≥ 2")
    return [_download(client, f.info.run_id, "model", dst / f"fold_{f.data.tags[FOLD]}") for f in folds]


def variance_inputs(tests: dict[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """Which held-out inputs give the ensemble variance E[std²]: the set held out of the dataset (``test``: the
    pool's distribution, like the out-of-fold errors), else every test file together; (description, indices)."""
    if "test" in tests:
        return "test", tests["test"]
    if not tests:
        return "", np.zeros(0, np.int64)
    return " + ".join(tests), np.concatenate(list(tests.values()))


OOF_CHECK_MOLECULES = 32  # stored out-of-fold predictions are checked against the loaded members on this many


def _stored_oof(stored: dict[str, np.ndarray] | None, folds: list[tuple[np.ndarray, np.ndarray]], forces: bool
                ) -> dict[str, np.ndarray] | None:
    """The trial's stored out-of-fold predictions when they cover exactly the folds' validation sets, else None."""
    need = [keys.prediction("oof", w) for w in ("idx", "fold", "energy")] + ([keys.prediction("oof", "forces")] if forces else [])
    if stored is None or any(n not in stored for n in need):
        return None
    idx, fold = stored[need[0]], stored[need[1]]
    for i, (_, val) in enumerate(folds):
        if not np.array_equal(np.sort(idx[fold == i]), np.sort(val)):
            return None
    return {"idx": idx, "owner": fold, "energy": stored[need[2]], "forces": stored[need[3]] if forces else None}


def oof_predictions(ens: SchNetEnsemble, data: Molecules, folds: list[tuple[np.ndarray, np.ndarray]],
                    stored: dict[str, np.ndarray] | None, max_molecules: int, rng: np.random.Generator
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each pool molecule's prediction by the member that held it out: the trial's stored ones (``predictions.npz``,
    computed once when each fold finished) after checking a sample against the loaded members, else predicted now.

    Returns ({"idx" [n], "owner" [n], "energy" [n], "forces" [n_atoms, 3] or None}, details).
    """
    forces = data.has_forces
    oof = _stored_oof(stored, folds, forces)
    details: dict[str, Any] = {}
    if oof is not None:
        sample = rng.choice(len(oof["idx"]), min(OOF_CHECK_MOLECULES, len(oof["idx"])), replace=False)
        pp = ens.predict(data.subset(oof["idx"][sample]), forces=False, calibrated=False, members=True)
        diff = float(np.max(np.abs(pp.members_energy[oof["owner"][sample], np.arange(len(sample))] - oof["energy"][sample])))
        details["oof_energy_max_abs_diff_vs_sweep"] = diff
        if diff > 1e-6 * float(np.max(np.abs(oof["energy"]))) + 1e-3:  # not these members' predictions: predict again
            details["oof_stored_rejected"] = True
            oof = None
    if oof is None:
        pool = np.concatenate([v for _, v in folds])  # [n_pool]
        owner = np.concatenate([np.full(len(v), i) for i, (_, v) in enumerate(folds)])  # [n_pool] member that held it out
        if len(pool) > max_molecules:
            keep = np.sort(rng.choice(len(pool), max_molecules, replace=False))
            pool, owner = pool[keep], owner[keep]
        sub = data.subset(pool)
        pp = ens.predict(sub, forces=forces, calibrated=False, members=True)
        atom_owner = np.repeat(owner, sub.n_atoms)  # [n_pool_atoms]
        return {"idx": pool, "owner": owner, "energy": pp.members_energy[owner, np.arange(len(pool))],
                "forces": pp.members_forces[atom_owner, np.arange(len(sub.Z))] if forces else None}, \
            {**details, "oof_source": "predicted by the loaded members"}
    if len(oof["idx"]) > max_molecules:  # a random subset of molecules, with their atoms
        keep = np.sort(rng.choice(len(oof["idx"]), max_molecules, replace=False))
        atoms = data.subset(oof["idx"]).atom_index(keep)  # stored forces are laid out as the pool's molecules
        oof = {"idx": oof["idx"][keep], "owner": oof["owner"][keep], "energy": oof["energy"][keep],
               "forces": None if oof["forces"] is None else oof["forces"][atoms]}
    return oof, {**details, "oof_source": "stored by the sweep (predictions.npz), checked on a sample"}


def fit_calibration(ens: SchNetEnsemble, data: Molecules, folds: list[tuple[np.ndarray, np.ndarray]],
                    tests: dict[str, np.ndarray], max_molecules: int = MAX_CALIBRATION_MOLECULES, seed: int = 0,
                    stored: dict[str, np.ndarray] | None = None) -> tuple[Calibration, dict[str, list[PropertyErrors]], dict]:
    """Fit the std scale on out-of-fold errors (pool) and the ensemble variance on held-out inputs; errors per test set.

    Args:
        ens: the ensemble, members in fold order (member i held out ``folds[i][1]``).
        data: the sweep's molecules (the dataset's, then the test files').
        folds: (train, val) indices per fold.
        tests: named test sets (labels used only for the reports). With none, the stds stay uncalibrated (scale 1).
        stored: the trial's ``predictions.npz`` arrays (its out-of-fold predictions are used when they check out).

    Returns:
        (calibration, {test set: [energy errors, force errors]}, out-of-fold predictions).
    """
    rng = np.random.default_rng(seed)
    k = ens.k
    if len(folds) != k:
        raise EnsembleCommandError(f"{len(folds)} folds in split.json but {k} members")
    forces = data.has_forces
    oof, oof_details = oof_predictions(ens, data, folds, stored, max_molecules, rng)
    pool = oof["idx"]
    details: dict[str, Any] = {"k": k, "std_ddof": STD_DDOF, "n_pool": int(len(pool)), **oof_details}
    tests = {name: np.sort(rng.choice(idx, max_molecules, replace=False)) if len(idx) > max_molecules else idx
             for name, idx in tests.items()}
    preds = {name: (data.subset(idx), ens.predict(data.subset(idx), forces=forces, calibrated=False))
             for name, idx in tests.items()}
    props: dict[str, list[PropertyErrors]] = {}
    for name, (mols, pt) in preds.items():
        props[name] = [PropertyErrors("energy", ens.energy_unit)]
        props[name][0].add(pt.energy - mols.E, pt.energy_std)
        if forces:
            props[name].append(PropertyErrors("forces", f"{ens.energy_unit}/Å"))
            props[name][1].add(pt.forces - mols.F, pt.forces_std)
    source, held = variance_inputs(tests)
    details["variance_inputs"], details["n_test"] = source, int(len(held))
    if not len(held):
        details["reason"] = "no test molecules: nothing held out to measure the ensemble variance on"
        return Calibration(method="identity", details=details), props, oof
    names = [source] if source == "test" else list(tests)
    e_std = np.concatenate([preds[n][1].energy_std for n in names])  # [n_held]
    a_e, details["energy"] = fit_scale_oof(oof["energy"] - data.E[pool], e_std, k)
    a_f = 1.0
    if forces:
        f_oof = oof["forces"] - data.subset(pool).F  # [n_pool_atoms, 3]
        f_std = np.concatenate([preds[n][1].forces_std for n in names])  # [n_held_atoms, 3]
        a_f, details["forces"] = fit_scale_oof(f_oof, f_std, k)
    return Calibration(energy_scale=a_e, forces_scale=a_f, method="oof-variance-decomposition", details=details), props, oof


def assemble(client, uri: str, sweep_run, trial_run, console: Console, max_calibration: int = MAX_CALIBRATION_MOLECULES,
             register: bool = True) -> Loaded:
    """Build, calibrate, report, log and register the ensemble of a sweep's best (or given) trial."""
    from schnet_model.data.heldout import with_tests
    from schnet_model.data.splits import SplitManifest
    from schnet_model.files import sha256 as checksum

    t0 = time.time()
    sid = sweep_run.info.run_id
    sweep_name = sweep_run.data.tags.get(SWEEP_ID, sid)
    if trial_run is None:
        trial_run = client.get_run(sweep_run.data.tags[keys.BEST_TRIAL_RUN])
    trial_id = trial_run.data.tags.get(keys.TRIAL_ID, trial_run.info.run_id)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        dirs = fold_model_dirs(client, trial_run, tmp / "folds")
        spec = SweepSpec.model_validate_json(_download(client, sid, keys.SPEC_JSON, tmp).read_text())
        manifest = SplitManifest.from_json(_download(client, sid, keys.SPLIT_JSON, tmp).read_text())
        meta = {"sweep": sweep_name, "sweep_run_id": sid, "trial_id": trial_id, "trial_run_id": trial_run.info.run_id,
                "experiment": client.get_experiment(sweep_run.info.experiment_id).name, "created": time.time()}
        try:
            ens = SchNetEnsemble.from_model_dirs(dirs, meta=meta)
        except (ModelLoadError, EnsembleError) as e:
            raise EnsembleCommandError(f"trial {trial_id}: fold models do not load ({str(e).splitlines()[0]})") from e
        console.print(f"sweep {sweep_name}: trial {trial_id}, {ens.k} members ({ens.config.n_atom_basis}/"
                      f"{ens.config.n_filters}/{ens.config.n_interactions}), energies in {ens.energy_unit}")
        try:
            joined = with_tests(spec.dataset)
        except DataError as e:
            raise EnsembleCommandError(f"cannot re-read the sweep's data to calibrate the ensemble: {e}") from e
        files = [(joined.dataset.path, checksum(joined.dataset.path), manifest.dataset_sha256)] + [
            (f.path, f.sha256, manifest.test_files[name].sha256) for name, f in joined.files.items() if name in manifest.test_files]
        for path, sha, want in files:  # the test files' sha256 were taken when with_tests read them
            if sha != want:
                raise EnsembleCommandError(f"{path}: sha256 {sha[:12]}… differs from the sweep's {want[:12]}…; "
                                           "the file changed since the sweep")
        data = joined.molecules
        if data.energy_unit != ens.energy_unit:
            raise EnsembleCommandError(f"dataset in {data.energy_unit} but the members were trained in {ens.energy_unit}")
        folds = [(f.train, f.val) for f in manifest.folds]
        cal, props, _ = fit_calibration(ens, data, folds, manifest.test_sets(), max_calibration,
                                        stored=_stored_predictions(client, trial_run.info.run_id, tmp))
        ens.calibration = cal
        reports = {name: build_report(pr, cal) for name, pr in props.items()}
        for name, report in reports.items():
            what = "held-out test set" if name == "test" else f"test file {name}"
            console.print(report_table(report, cal, f"{sweep_name} trial {trial_id}: {what} "
                                                    f"({len(manifest.test_sets()[name]):,} molecules), {ens.k}-member ensemble"))
        console.print(calibration_line(cal))
        ens_dir = ens.save(tmp / "ensemble")
        model_uri = None
        if register:
            model_uri = log_and_register(client, uri, sweep_run, ens_dir, reports, cal, ens.energy_unit, console)
    console.print(f"assembled in {time.time() - t0:.0f} s")
    return Loaded(ens, f"sweep {sweep_name} trial {trial_id}", model_uri)


def _stored_predictions(client, trial_run_id: str, tmp: Path) -> dict[str, np.ndarray] | None:
    """The trial's ``predictions.npz`` arrays (None when the run has none)."""
    try:
        path = _download(client, trial_run_id, keys.PREDICTIONS, tmp / "pred")
    except EnsembleCommandError:
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _code_copy(dst: Path) -> Path:
    """A clean copy of the ``schnet_model`` package (no caches) for the model's ``code_paths``."""
    import schnet_model

    src = Path(schnet_model.__file__).parent
    out = dst / "schnet_model"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def calibration_line(cal: Calibration) -> str:
    """Where the scales come from, in one line (or why there are none)."""
    d = cal.details
    if cal.method == "identity":
        return (f"stds not recalibrated (scale 1): {d.get('reason', 'no calibration data')}; give dataset.n_test or "
                "dataset.test_path to the sweep, or judge the raw stds on a labelled file with --evaluate FILE")
    return (f"recalibration (out-of-fold variance decomposition): σ = {cal.energy_scale:.3g}·std for energies, "
            f"{cal.forces_scale:.3g}·std for force components — from the out-of-fold errors of {d['n_pool']:,} pool "
            f"molecules and the ensemble variance on the inputs of {d['variance_inputs']} ({d['n_test']:,} molecules; "
            "their labels unused)")


def log_and_register(client, uri: str, sweep_run, ens_dir: Path, reports: dict, cal: Calibration, energy_unit: str,
                     console: Console) -> str:
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
                pip_requirements=[f"torch>={torch_req.rsplit('.', 1)[0]}", "numpy>=1.26", "pydantic>=2.6", "safetensors>=0.4",
                                  "ase>=3.23", "pandas", f"mlflow=={mlflow.__version__}"],
                metadata={"std_ddof": STD_DDOF, "energy_unit": energy_unit,
                          "format": "sweep-schnet-ensemble"})
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, ALIAS, version)
    model_uri = f"models:/{name}/{version}"
    client.set_tag(sid, ENSEMBLE_TAG, model_uri)
    console.print(f"MLflow: registered {name} version {version} (alias {ALIAS}); report and reliability plot on sweep run {sid}")
    return model_uri


# -- prediction and evaluation -------------------------------------------------------------------------
def predict_file(ens: SchNetEnsemble, path: Path, out: Path | None, unit: str | None = None, input_unit: str | None = None,
                 calibrated: bool = True, evaluate: bool = False, console: Console | None = None,
                 max_atoms: int | None = None) -> dict[str, Any]:
    """Predict every frame of ``path``; write ``out`` (+ CSV) atomically when given; errors (and the report) with references.

    Returns a summary: counts, units, error statistics (and the report when ``evaluate``).
    """
    from orchestrator.ensemble.io import DEFAULT_CHUNK_ATOMS

    console = console or Console()
    try:
        unit = canonical_energy_unit(unit) if unit else ens.energy_unit
    except UnitError as e:
        raise EnsembleCommandError(f"--unit: {e}") from e
    if out is not None and Path(out).resolve() == Path(path).resolve():
        raise EnsembleCommandError(f"{out}: the output would overwrite the input")
    ref_unit, chunks = read_chunks(path, max_atoms or DEFAULT_CHUNK_ATOMS, input_unit)
    props = [PropertyErrors("energy", unit), PropertyErrors("forces", f"{unit}/Å")]
    n_mols = n_atoms = 0
    n_ref_e = 0
    t0 = time.time()
    files = AtomicFiles(*(() if out is None else (Path(out), csv_path(Path(out)))))
    with files as handles:
        writer = None
        for chunk in chunks:
            bad = ~np.isin(chunk.Z, ens.elements)  # [n_atoms]
            if bad.any():
                frame = chunk.first + int(np.searchsorted(chunk.atom_ptr, int(np.argmax(bad)), side="right")) - 1
                ens.check_elements(chunk.Z, f"{path}: frame {frame}")
            mols = Molecules(Z=chunk.Z, R=chunk.R, atom_ptr=chunk.atom_ptr, E=None, F=None, energy_unit=ens.energy_unit,
                             name=Path(path).name)
            raw = ens.predict(mols, calibrated=False).to_unit(unit)
            pred = raw.scaled(ens.calibration) if calibrated else raw
            ref_e, ref_f = convert_refs(chunk, ref_unit, unit)
            has_ref = bool(np.isfinite(ref_e).any() or np.isfinite(ref_f).any())
            if has_ref:
                n_ref_e += int(np.isfinite(ref_e).sum())
                props[0].add(raw.energy - ref_e, raw.energy_std)
                props[1].add(raw.forces - ref_f, raw.forces_std)
            if handles:
                if writer is None:
                    writer = Writer(handles[0], handles[1], unit, calibrated and ens.calibration.method != "identity", has_ref)
                writer.write(chunk, pred, ref_e if has_ref else None, ref_f if has_ref else None)
            n_mols += len(chunk)
            n_atoms += len(chunk.Z)
        if handles:
            files.commit()
    summary: dict[str, Any] = {"molecules": n_mols, "atoms": n_atoms, "unit": unit, "reference_unit": ref_unit,
                               "seconds": time.time() - t0, "with_reference": n_ref_e}
    e, _ = props[0].arrays()
    f, _ = props[1].arrays()
    if len(e):
        summary["energy_mae"], summary["energy_rmse"] = float(np.abs(e).mean()), float(np.sqrt(np.mean(e**2)))
    if len(f):
        summary["forces_mae"], summary["forces_rmse"] = float(np.abs(f).mean()), float(np.sqrt(np.mean(f**2)))
    if evaluate:
        if not len(e) and not len(f):
            raise EnsembleCommandError(f"{path}: no reference energies or forces to evaluate against")
        summary["report"] = build_report([p for p in props if p.arrays()[0].size], ens.calibration)
    return summary


def default_output(path: Path) -> Path:
    """``mols.xyz`` → ``./mols.ensemble.extxyz``."""
    return Path.cwd() / f"{Path(path).stem}.ensemble.extxyz"


def run_command(source: str | None, predict: Path | None, evaluate: Path | None, out: Path | None, unit: str | None,
                input_unit: str | None, tracking_uri: str | None, rebuild: bool, save: Path | None, uncalibrated: bool,
                console: Console, export: Path | None = None) -> None:
    """The ``sweep ensemble`` command (errors as :class:`EnsembleCommandError`, :class:`EnsembleError`, :class:`InputError`)."""
    with no_artifact_progress_bar():
        _run_command(source, predict, evaluate, out, unit, input_unit, tracking_uri, rebuild, save, uncalibrated, console,
                     export)


def _run_command(source: str | None, predict: Path | None, evaluate: Path | None, out: Path | None, unit: str | None,
                 input_unit: str | None, tracking_uri: str | None, rebuild: bool, save: Path | None, uncalibrated: bool,
                 console: Console, export: Path | None) -> None:
    if predict is not None and evaluate is not None:
        raise EnsembleCommandError("give --predict or --evaluate, not both")
    target = predict or evaluate
    if target is not None and not Path(target).is_file():
        raise EnsembleCommandError(f"{target}: no such file")
    for opt, val in (("--unit", unit), ("--input-unit", input_unit)):
        if val:
            try:
                canonical_energy_unit(val)
            except UnitError as e:
                raise EnsembleCommandError(f"{opt}: {e}") from e
    uri = TrackingConfig(uri=tracking_uri).resolved_uri()
    loaded = resolve(source, uri, rebuild, console)
    ens = loaded.ensemble
    console.print(f"ensemble: {loaded.description}; {ens.k} members, elements {ens.elements}, energies in {ens.energy_unit}, "
                  f"std ddof={STD_DDOF}, recalibration {ens.calibration.method} "
                  f"(energy ×{ens.calibration.energy_scale:.3g}, forces ×{ens.calibration.forces_scale:.3g})")
    if save is not None:
        ens.save(save)
        console.print(f"ensemble directory written to {save} (load with SchNetEnsemble.load / SchNetEnsembleCalculator)")
    if export is not None:
        from schnet_model.export import export_ensemble

        t0 = time.time()
        export_ensemble(ens, export)
        console.print(f"standalone ensemble exported to {export} in {time.time() - t0:.0f} s (torch.export program + "
                      f"manifest with sha256; python -c 'import sys; sys.path.insert(0, \"{export}\"); "
                      f"from load_ensemble import load; print(load(\"{export}\").manifest[\"outputs\"])')", soft_wrap=True)
    if target is None:
        src = f" {source}" if source else ""
        console.print(f"next: sweep ensemble{src} --predict mols.xyz -o preds.extxyz  (energies, forces and their std "
                      f"for your molecules); sweep ensemble{src} --save ens/ && python examples/md_uncertainty.py ens/  "
                      f"(MD that stops where the ensemble is unsure); mlflow ui --backend-store-uri {uri}  "
                      "(the sweep → trial → fold runs)")
        return
    if predict is not None:
        out = out or default_output(predict)
    res = predict_file(ens, Path(target), out, unit, input_unit, not uncalibrated, evaluate is not None, console)
    u = res["unit"]
    msg = f"{res['molecules']:,} molecules ({res['atoms']:,} atoms) in {res['seconds']:.1f} s"
    if out is not None:
        msg += f" → {out} and {csv_path(Path(out))} (energies in {u}, forces in {u}/Å)"
    console.print(msg)
    if "energy_mae" in res or "forces_mae" in res:
        parts = []
        if "energy_mae" in res:
            parts.append(f"energy MAE {res['energy_mae']:.4g} {u} (RMSE {res['energy_rmse']:.4g})")
        if "forces_mae" in res:
            parts.append(f"forces MAE {res['forces_mae']:.4g} {u}/Å (RMSE {res['forces_rmse']:.4g})")
        console.print(f"errors against the file's references (read as {res['reference_unit']}): " + ", ".join(parts))
    if "report" in res:
        console.print(report_table(res["report"], ens.calibration, f"{Path(target).name}: calibration report"))


__all__ = ["ALIAS", "MODEL_SUFFIX", "EnsembleCommandError", "assemble", "find_sweep", "fit_calibration", "predict_file",
           "resolve", "run_command"]
