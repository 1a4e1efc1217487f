"""Separate test files: their own units converted, elements checked, kept apart from every split, named errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import QUICKSTART_DATA

from schnet_model.config import DatasetConfig
from schnet_model.data import DataError
from schnet_model.data.heldout import n_held_out, with_tests
from schnet_model.data.splits import SplitManifest, holdout, kfold
from schnet_model.units import energy_factor

KCAL_TO_EV = energy_factor("kcal/mol", "eV")


def write_extxyz(path: Path, idx, unit: str = "eV", numbers=None) -> Path:
    """Frames ``idx`` of the quickstart data as extended XYZ, energies and forces converted to ``unit``."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    z = np.load(QUICKSTART_DATA)
    f = energy_factor("kcal/mol", unit)
    frames = []
    for i in idx:
        a = Atoms(numbers=z["z"] if numbers is None else numbers, positions=z["R"][i])
        a.calc = SinglePointCalculator(a, energy=float(np.ravel(z["E"][i])[0]) * f, forces=z["F"][i] * f)
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    return path


def test_test_files_are_read_in_their_unit_and_joined_after_the_dataset(tmp_path):
    hot = write_extxyz(tmp_path / "hot.xyz", range(990, 1000), unit="eV")
    cold = write_extxyz(tmp_path / "cold.xyz", range(980, 985), unit="kcal/mol")
    cfg = DatasetConfig(path=QUICKSTART_DATA, test_path={"hot": hot, "cold": cold}, test_energy_unit=None)
    joined = with_tests(cfg)
    data = joined.molecules
    assert len(joined.dataset.molecules) == 1000 and len(data) == 1015 and data.energy_unit == "kcal/mol"
    z = np.load(QUICKSTART_DATA)
    hot_idx = joined.files["hot"].idx
    assert hot_idx.tolist() == list(range(1000, 1010)) and joined.files["cold"].idx.tolist() == list(range(1010, 1015))
    # eV in the file (ASE's extxyz unit), kcal/mol after reading: the same numbers as the npz
    np.testing.assert_allclose(data.E[hot_idx], np.ravel(z["E"])[990:1000], rtol=1e-9)
    # extxyz keeps 8 digits
    np.testing.assert_allclose(data.subset(hot_idx).F, z["F"][990:1000].reshape(-1, 3), rtol=1e-6, atol=1e-6)
    assert len(joined.files["hot"].sha256) == 64
    # a declared unit wins over the file's: the cold file holds kcal/mol numbers
    joined = with_tests(DatasetConfig(path=QUICKSTART_DATA, test_path=cold, test_energy_unit="kcal/mol"))
    np.testing.assert_allclose(joined.molecules.E[1000:], np.ravel(z["E"])[980:985], rtol=1e-12)
    assert list(joined.files) == ["test"]
    # no molecules held out of the dataset when test files are given (unless n_test asks for some)
    assert n_held_out(cfg, joined.dataset) == 0
    assert n_held_out(cfg.model_copy(update={"n_test": 50}), joined.dataset) == 50


def test_split_manifest_keeps_the_test_files_apart_and_round_trips(tmp_path):
    hot = write_extxyz(tmp_path / "hot.xyz", range(990, 1000))
    joined = with_tests(DatasetConfig(path=QUICKSTART_DATA, test_path={"test_hot": hot}, n_test=20))
    pool, test = holdout(1000, 20, 0, n_needed=60)
    m = SplitManifest("d", "x" * 64, 0, test, folds=kfold(pool[:60], 3, 0), test_files=joined.files)
    m.check_disjoint()
    assert list(m.test_sets()) == ["test", "test_hot"] and len(m.test_sets()["test_hot"]) == 10
    assert "test 20 molecules (held out of the dataset), test_hot 10 molecules (file hot.xyz)" in m.describe_tests()
    back = SplitManifest.from_json(m.to_json())
    assert (back.test_files["test_hot"].idx.tolist() == list(range(1000, 1010))
            and back.test_files["test_hot"].path == str(hot))
    leaky = SplitManifest("d", "x" * 64, 0, test,
                          folds=[*m.folds[:2], type(m.folds[0])(np.array([1005]), m.folds[2].val)],
                          test_files=joined.files)
    with pytest.raises(DataError, match="split leak: 1 test molecules in fold 2 train"):
        leaky.check_disjoint()
    none = SplitManifest("d", "x" * 64, 0, np.zeros(0, np.int64), folds=m.folds)
    assert none.test_sets() == {} and none.describe_tests().startswith("no test set: ")


def test_test_file_errors_name_the_file_and_what_was_expected(tmp_path):
    chlorine = write_extxyz(tmp_path / "cl.xyz", [0], numbers=[6, 6, 17, 1, 1, 1, 1, 1, 1])
    with pytest.raises(DataError, match=r"dataset.test_path 'test' \(.*cl.xyz\): elements Cl \(Z=17\) are not in the "
                                        r"training data \(H \(Z=1\), C \(Z=6\), O \(Z=8\)\)"):
        with_tests(DatasetConfig(path=QUICKSTART_DATA, test_path=chlorine))
    import ase.io
    from ase import Atoms

    ase.io.write(tmp_path / "bare.xyz", [Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])],
                 format="extxyz")
    with pytest.raises(DataError, match="bare.xyz: frame 1: no energy 'energy'"):
        with_tests(DatasetConfig(path=QUICKSTART_DATA, test_path=tmp_path / "bare.xyz"))
    with pytest.raises(DataError, match=r"dataset.test_path 'hot': .*missing.xyz: no such file"):
        with_tests(DatasetConfig(path=QUICKSTART_DATA, test_path={"hot": tmp_path / "missing.xyz"}))


@pytest.mark.parametrize("test_path, n_test, expected", [
    ("t.xyz", 5, "to have both, name the files: test_path: {name: file}"),
    ({"test": "t.xyz"}, 5, "the name 'test' is the set held out of dataset.path (n_test)"),
    ({"val": "t.xyz"}, None, "test set name 'val' must be letters, digits and _"),
    ({"300K": "t.xyz"}, None, "test set name '300K' must be letters, digits and _ (starting with a letter)"),
    ({}, None, "an empty mapping"),
])
def test_test_path_config_errors(test_path, n_test, expected):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")
                       .replace("}", r"\}")):
        DatasetConfig(path="d.npz", test_path=test_path, n_test=n_test)


def test_sweep_train_reports_every_named_test_file(tmp_path):
    write_extxyz(tmp_path / "hot.xyz", range(990, 1000), unit="eV")
    write_extxyz(tmp_path / "cold.xyz", range(980, 985), unit="eV")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "dataset": {"path": str(QUICKSTART_DATA), "n_train": 16, "n_val": 8,
                    "test_path": {"test_hot": "hot.xyz", "test_cold": "cold.xyz"}},  # relative to the spec
        "model": {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 1}, "training": {"max_epochs": 1}},
        sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "train", "s.yaml", "--out", "m"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    assert "test sets: test_hot 10 molecules (file hot.xyz), test_cold 5 molecules (file cold.xyz)" in r.stdout
    assert "test_hot (10 molecules): energy MAE" in r.stdout and "test_cold (5 molecules)" in r.stdout
    metrics = json.loads((tmp_path / "m" / "metadata.json").read_text())["metrics"]
    assert set(metrics) == {"val", "test_hot", "test_cold"} and np.isfinite(metrics["test_hot"]["forces_mae"])
    split = json.loads((tmp_path / "m" / "split.json").read_text())
    assert split["test"] == [] and split["test_files"]["test_hot"]["idx"] == list(range(1000, 1010))


def test_the_final_table_has_a_column_pair_per_test_set_or_says_there_is_none():
    from rich.console import Console

    from orchestrator.search.outcome import SweepOutcome, TrialSummary, results_table

    trial = TrialSummary(trial_id="abc", status="completed", params={}, val_loss_mean=1.0, val_loss_std=0.1, epochs=3,
                         tests={"test": {"energy": 0.5, "forces": 0.25}, "test_hot": {"energy": 2.0, "forces": None}})
    console = Console(width=250, record=True)
    outcome = SweepOutcome("s", Path("."), "r", trials=[trial], best=trial, seconds=1.0, test_sets=["test", "test_hot"])
    console.print(results_table(outcome, "eV"))
    text = console.export_text()
    assert "test E MAE [eV]" in text and "test_hot F MAE [eV/Å]" in text and "│ 0.5 " in text and "│ –" in text
    console = Console(width=250, record=True)
    console.print(results_table(SweepOutcome("s", Path("."), "r", trials=[dataclasses.replace(trial, tests={})],
                                             best=trial, seconds=1.0), "eV"))
    text = " ".join(console.export_text().split())
    assert "no test set: no test errors (give dataset.n_test or dataset.test_path)" in text and "MAE" not in text
