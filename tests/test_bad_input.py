"""Bad input as a careless or hostile user types it (issue 26): every case ends with one line naming the problem,
a non-zero exit, nothing written and nothing lost, within seconds. Each case runs the real command."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import QUICKSTART_DATA, sweep_cli

pytestmark = pytest.mark.slow


sweep = partial(sweep_cli, timeout=120)  # sweep ARGS, cwd=…: the CLI in its own process

def one_line_error(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The command failed with ``code``, said so in one line containing every needle, and printed no traceback."""
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], err[-2000:])
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in r.stdout + r.stderr
    for n in needles:
        assert n in err, (n, err)
    return err


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def work(tmp_path) -> Path:
    """A user's directory: a foreign directory v/ with a file, a data file, a spec."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "a").write_text("x\n")
    shutil.copy(QUICKSTART_DATA, tmp_path / "small.npz")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "dataset": {"path": "small.npz", "n_train": 24, "n_val": 8, "n_test": 8},
        "model": {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "rbf_max": 6.0},
        "training": {"max_epochs": 1, "batch_size": 8, "lr": {"loguniform": [1.0e-4, 1.0e-3]}}}))
    return tmp_path


# -- nothing lost: destinations this tool did not write are never replaced ---------------------------------------------

@pytest.mark.parametrize(("args", "needles"), [
    (["--save", "v"], ["v: exists and is not an ensemble directory this tool wrote"]),
    (["--export", "v"], ["v: exists and is not an export directory this tool wrote"]),
    (["--save", "small.npz"], ["small.npz: exists and is not a directory"]),
    (["--export", "small.npz"], ["small.npz: exists and is not a directory"]),
    (["--predict", "mols.xyz", "-o", "/proc/p.extxyz"], ["/proc/p.extxyz: cannot write there"]),
    (["--predict", "mols.xyz", "-o", "small.npz/p.extxyz"], ["small.npz/p.extxyz: cannot write there",
                                                               "small.npz is a file, not a directory"]),
    (["--export", "/proc/x"], ["/proc/x: cannot write there"]),
], ids=["save-onto-dir", "export-onto-dir", "save-onto-file", "export-onto-file", "out-in-proc", "out-under-file",
        "export-in-proc"])
def test_sweep_ensemble_never_replaces_what_it_did_not_write(work, trained_ensemble, args, needles):
    (work / "mols.xyz").write_text("3\n\nO 0 0 0\nH 0 0 0.96\nH 0.93 0 -0.24\n")
    before = snapshot(work)
    r = sweep("ensemble", str(trained_ensemble), *args, cwd=work)
    one_line_error(r, *needles)
    assert snapshot(work) == before  # v/a, small.npz: all there, nothing new


def test_an_ensemble_this_tool_wrote_is_replaced_only_when_asked(work, trained_ensemble):
    r = sweep("ensemble", str(trained_ensemble), "--save", "ens", cwd=work)
    assert r.returncode == 0, r.stderr
    first = snapshot(work / "ens")
    one_line_error(sweep("ensemble", str(trained_ensemble), "--save", "ens", cwd=work),
                   "ens: an ensemble directory exists there; pass --overwrite to replace it")
    assert snapshot(work / "ens") == first
    r = sweep("ensemble", str(trained_ensemble), "--save", "ens", "--overwrite", cwd=work)
    assert r.returncode == 0 and (work / "ens" / "ensemble.json").is_file(), r.stderr


@pytest.mark.parametrize(("out", "needles"), [
    ("/proc/t", ["/proc/t: cannot write there"]),
    ("v", ["v: exists and is not a model directory this tool wrote"]),
    ("small.npz", ["small.npz: exists and is not a directory"]),
])
def test_sweep_train_checks_its_destination_before_training(work, out, needles):
    before = snapshot(work)
    t0 = time.time()
    one_line_error(sweep("train", "s.yaml", "--out", out, cwd=work), *needles)
    assert time.time() - t0 < 60 and snapshot(work) == before


def test_sweep_train_replaces_its_own_model_only_with_overwrite(work):
    assert sweep("train", "s.yaml", "--out", "m", cwd=work).returncode == 0
    one_line_error(sweep("train", "s.yaml", "--out", "m", cwd=work), "a model directory exists there; pass --overwrite")
    assert sweep("train", "s.yaml", "--out", "m", "--overwrite", cwd=work).returncode == 0


@pytest.mark.parametrize(("out", "needles"), [
    ("/proc/g.npz", ["-o: /proc/g.npz: cannot write there"]),
    ("small.npz/g.npz", ["small.npz is a file, not a directory"]),
    ("v", ["-o: v: is a directory"]),
])
def test_sweep_data_generate_checks_its_destination_before_labelling(work, out, needles):
    before = snapshot(work)
    one_line_error(sweep("data", "generate", "-o", out, "--frames", "2", cwd=work), *needles)
    assert snapshot(work) == before


# -- nothing hangs: an unreachable or unknown tracking store fails in seconds ------------------------------------------

@pytest.mark.parametrize("command", [["list"], ["status"], ["ensemble"]])
@pytest.mark.parametrize(("uri", "needles"), [
    ("http://127.0.0.1:9", ["tracking URI http://127.0.0.1:9: no MLflow server answers there"]),
    ("foo://bar", ["tracking URI foo://bar: unknown scheme 'foo'"]),
])
def test_an_unreachable_or_unknown_tracking_uri_fails_within_seconds(work, command, uri, needles):
    t0 = time.time()
    r = sweep(*command, "--tracking-uri", uri, cwd=work, timeout=60)
    assert time.time() - t0 < 20
    one_line_error(r, *needles)
    assert not (work / "mlflow.db").exists()


def test_sweep_run_with_an_unreachable_tracking_server_fails_before_reading_the_data(work):
    t0 = time.time()
    one_line_error(sweep("run", "s.yaml", "--set", "tracking.uri=http://127.0.0.1:9", cwd=work),
                   "no MLflow server answers there")
    assert time.time() - t0 < 30 and not (work / "sweeps").exists()


def test_resume_name_outside_the_storage_root_is_refused(work):
    (work / "fake").mkdir()
    (work / "fake" / "sweep.json").write_text("{}")
    one_line_error(sweep("run", "s.yaml", "--resume", "--name", "../fake", cwd=work),
                   "--name ../fake: expected a sweep's name, without path separators")
    assert not (work / "sweeps").exists() and not (work / "mlflow.db").exists()


# -- no traceback: bad data and specs, in one line ---------------------------------------------------------------------

def _npz(work: Path, name: str, **change) -> str:
    z = dict(np.load(QUICKSTART_DATA))
    z.update(change)
    np.savez(work / name, **z)
    return name


def test_bad_data_files_in_one_line(work):
    z = np.load(QUICKSTART_DATA)["z"]
    one_line_error(sweep("data", "info", _npz(work, "z150.npz", z=np.where(np.arange(len(z)) == 0, 150, z)), cwd=work),
                   "z150.npz: frame 1: atomic number 150; expected an element, 1–118")
    heavy = _npz(work, "z100.npz", z=np.where(np.arange(len(z)) == 0, 100, z))
    assert sweep("data", "info", heavy, cwd=work).returncode == 0  # fermium is an element: described
    one_line_error(sweep("train", "s.yaml", "--set", f"dataset.path={heavy}", "--out", "m", cwd=work),
                   "element Fm (Z=100) is beyond the model's embedding table", "set model.max_z: 101")
    one_line_error(sweep("run", "s.yaml", "--set", f"dataset.path={heavy}", cwd=work), "set model.max_z: 101")
    assert not (work / "m").exists() and not (work / "sweeps").exists()
    e = np.load(QUICKSTART_DATA)["E"].astype(float).copy()
    e[2] = np.nan
    one_line_error(sweep("data", "info", _npz(work, "nan.npz", E=e), cwd=work), "nan.npz: frame 3: energy is nan")
    (work / "rand.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    err = one_line_error(sweep("data", "info", "rand.npz", cwd=work), "rand.npz: not a readable npz file",
                         "not a complete zip archive")
    assert "allow_pickle" not in err and "pickle" not in err  # no advice to do the unsafe thing
    (work / "empty_frame.xyz").write_text("1\nenergy=-1.0 pbc=\"F F F\"\nH 0 0 0\n0\nenergy=-2.0 pbc=\"F F F\"\n")
    one_line_error(sweep("data", "info", "empty_frame.xyz", cwd=work), "frame 2 has no atoms")


def test_bad_specs_in_one_line(work):
    (work / "specdir").mkdir()
    one_line_error(sweep("run", "specdir", cwd=work), "specdir: is a directory; expected a spec YAML file")
    one_line_error(sweep("train", "specdir", cwd=work), "specdir: is a directory")
    (work / "dup.yaml").write_text("dataset: {path: small.npz}\ntraining: {lr: {loguniform: [1.0e-4, 1.0e-3]}}\n"
                                   "model: {}\ntraining: {max_epochs: 2}\n")
    one_line_error(sweep("run", "dup.yaml", cwd=work), "dup.yaml: line 4",
                   "key 'training' appears twice (lines 2 and 4)")
    err = one_line_error(sweep("train", "s.yaml", "--set", "training.lr=1e-3", "--set", "training=5", cwd=work),
                         "training: Input should be a valid dictionary (got 5) (from --set training=5)")
    assert "training.lr=1e-3" not in err
    one_line_error(sweep("run", "nope.yaml", cwd=work), "nope.yaml: no such spec file")
    one_line_error(sweep("run", "s.yaml", "--set", "search.num_samples=0", cwd=work), "search.num_samples")
    assert not (work / "sweeps").exists() and not (work / "mlflow.db").exists()


# -- words: a unit override seen, references in another unit, predictions beyond the calibration ----------------------

def test_a_unit_override_names_both_units():
    from schnet_model.config import DatasetConfig
    from schnet_model.data.load import load_dataset

    m = load_dataset(DatasetConfig(path=QUICKSTART_DATA, energy_unit="eV")).molecules
    assert "energy in eV" in m.describe() and (
        "note: the file declares kcal/mol, read as eV by dataset.energy_unit" in m.describe())
    assert "note" not in load_dataset(DatasetConfig(path=QUICKSTART_DATA)).molecules.describe()


def test_evaluate_says_when_the_references_look_like_another_unit(work, trained_ensemble):
    from test_heldout import write_extxyz

    write_extxyz(work / "ref.xyz", range(900, 910), unit="kcal/mol")  # kcal/mol numbers, no unit declared: read as eV
    r = sweep("ensemble", str(trained_ensemble), "--evaluate", "ref.xyz", cwd=work)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "they look like kcal/mol, not eV as read (declare it: --input-unit kcal/mol" in out
    r = sweep("ensemble", str(trained_ensemble), "--evaluate", "ref.xyz", "--input-unit", "kcal/mol", cwd=work)
    assert r.returncode == 0 and "look like" not in r.stdout


def test_predictions_beyond_any_std_seen_on_held_out_molecules_are_flagged():
    from orchestrator.ensemble.ensemble_command import extrapolated
    from schnet_model.data.molecules import Molecules
    from schnet_model.ensemble import EnsemblePrediction

    mols = Molecules(Z=np.ones(5, int), R=np.arange(15.0).reshape(5, 3), atom_ptr=np.array([0, 2, 5]), E=None, F=None,
                     energy_unit="eV")
    f_std = np.full((5, 3), 0.01)
    f_std[4, 1] = 0.5  # molecule 2: one force component far less certain than any seen
    norm = np.linalg.norm(f_std, axis=1)
    pred = EnsemblePrediction(energy=np.zeros(2), energy_std=np.array([0.02, 0.03]), forces=np.zeros((5, 3)),
                              forces_std=f_std, forces_std_norm=norm,
                              forces_std_max=np.array([norm[:2].max(), norm[2:].max()]),
                              forces_std_mean=np.array([norm[:2].mean(), norm[2:].mean()]), atom_ptr=mols.atom_ptr,
                              energy_unit="eV")
    seen = {"energy_per_atom": 0.05, "forces": 0.1}
    assert extrapolated(pred, mols, seen, 1.0).tolist() == [False, True]
    assert extrapolated(pred, mols, {"energy_per_atom": 0.005}, 1.0).tolist() == [True, True]  # energy per atom
    assert extrapolated(pred, mols, seen, 1000.0).tolist() == [False, False]  # predictions in meV, seen in eV


def test_secrets_are_written_private_from_the_first_byte(tmp_path):
    from orchestrator.cluster.mlflow_server import _write_private

    old = os.umask(0)
    try:
        _write_private(tmp_path / "pgpass", "secret\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pgpass").stat().st_mode) == 0o600
    assert (tmp_path / "pgpass").read_text() == "secret\n"
