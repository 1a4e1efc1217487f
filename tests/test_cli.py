"""`sweep train` end to end, and one-line errors for bad specs and overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import QUICKSTART_DATA, ROOT

from schnet_model import load_model


def sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def spec(tmp_path) -> Path:
    body = {
        "name": "tiny",
        "dataset": {"path": str(QUICKSTART_DATA), "n_train": 24, "n_val": 8, "n_test": 8},
        "model": {"n_atom_basis": 16, "n_filters": 16, "n_interactions": 2},
        "training": {"max_epochs": 5, "batch_size": 8},
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


def test_train_end_to_end(tmp_path, spec):
    r = sweep("train", str(spec), "--set", "training.max_epochs=2", "--out", "model", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "epoch    2" in r.stdout and "epoch    3" not in r.stdout  # the override took effect
    assert "test (8 molecules): energy MAE" in r.stdout and "kcal/mol/Å" in r.stdout
    model, info = load_model(tmp_path / "model")
    assert info.energy_unit == "kcal/mol" and info.elements == [1, 6, 8]
    assert model.config.n_atom_basis == 16
    split = json.loads((tmp_path / "model" / "split.json").read_text())
    assert len(split["train"]) == 24 and not set(split["train"]) & set(split["test"])
    assert len(split["dataset_sha256"]) == 64
    metrics = json.loads((tmp_path / "model" / "metadata.json").read_text())["metrics"]
    assert np.isfinite(metrics["test"]["forces_mae"])


def test_relative_dataset_path_resolves_against_spec_dir(tmp_path):
    sub = tmp_path / "specs"
    sub.mkdir()
    (tmp_path / "d.npz").write_bytes(QUICKSTART_DATA.read_bytes())
    (sub / "s.yaml").write_text(yaml.safe_dump({"dataset": {"path": "../d.npz", "n_train": 8, "n_val": 4, "n_test": 4},
                                                "model": {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 1},
                                                "training": {"max_epochs": 1}}))
    r = sweep("train", "specs/s.yaml", "--out", "m", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "training.max_epochs=abc"], "training.max_epochs: Input should be a valid integer"),
        (["--set", "training.lr=-1"], "training.lr: Input should be greater than 0"),
        (["--set", "model.cutoff=oops"], "model.cutoff: Input should be a valid number"),
        (["--set", "training.max_epoch=3"], "training.max_epoch: unknown key (from --set training.max_epoch=3)"),
        (["--set", "training.scheduler=linear"],
             "training.scheduler: Input should be 'exponential', 'plateau' or 'cosine'"),
        (["--set", "dataset.energy_unit=kcal"], "dataset.energy_unit: unknown energy unit 'kcal'"),
        (["--set", "training"], "expected dotted.key=value"),
        (["--set", "dataset.path.x=1"], "dataset.path is"),
        (["--set", "dataset.n_train=900", "--set", "dataset.n_val=200"], "split asks for 1108 molecules"),
    ],
)
def test_bad_overrides_give_one_line_errors(tmp_path, spec, args, expected):
    r = sweep("train", str(spec), *args, "--out", "m", cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0]
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dataset: {path: x.npz}\ntraining: {epochs: 3}\n", "training.epochs: unknown key"),
        ("dataset: {path: x.npz}\nmodel: {n_interactions: 0}\n",
         "model.n_interactions: Input should be greater than or equal to 1"),
        ("model: {}\n", "dataset: required key is missing"),
        ("dataset: {n_train: 3}\n", "dataset: give dataset.path or dataset.download"),
        ("dataset: {path: x.npz\n  bad\n", "line "),
        ("- a\n- b\n", "expected a mapping"),
        ("dataset: {path: missing.npz}\n", "missing.npz: no such file"),
    ],
)
def test_bad_spec_files_give_one_line_errors(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    r = sweep("train", str(p), cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], r.stderr
    assert "bad.yaml" in lines[0] or "missing.npz" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_missing_spec_file(tmp_path):
    r = sweep("train", "nope.yaml", cwd=tmp_path)
    assert r.returncode != 0 and "nope.yaml: no such spec file" in r.stderr


@pytest.mark.parametrize("args, expected", [
    (("learn", "x.yaml", "--pool-factor", "0"),
     "error: Invalid value for '--pool-factor': Input should be greater than or equal to 1 (see sweep learn --help)"),
    (("select", "--temperature", "hot"), "error: Invalid value for '--temperature': Input should be a valid number"),
    (("run", "x.yaml", "--bogus"), "error: No such option: --bogus"),
    (("data", "info"), "error: Missing argument 'path'. (see sweep data info --help)"),
])
def test_the_command_lines_own_usage_errors_are_one_line_too(tmp_path, args, expected):
    r = sweep(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and expected in r.stderr, r.stderr
    assert not r.stdout and not any(tmp_path.iterdir())


def test_sweep_alone_and_help_print_the_help_and_exit_zero(tmp_path):
    for args in ((), ("data",), ("--help",), ("learn", "--help")):
        r = sweep(*args, cwd=tmp_path)
        assert r.returncode == 0 and "Usage: sweep" in r.stdout and not r.stderr, (args, r.stderr)


def test_quickstart_spec_validates_and_trains_the_paper_configuration_first():
    from orchestrator.spec.sweep import load_sweep_spec

    s = load_sweep_spec(ROOT / "search_spaces" / "quickstart.yaml")
    assert s.dataset.path == QUICKSTART_DATA and s.cv.k == 3
    first = s.train_spec()
    assert first.model.n_rbf == 300 and first.model.n_interactions == 3 and first.training.lr == 1e-3


def test_data_info(tmp_path):
    r = sweep("data", "info", str(QUICKSTART_DATA), cwd=tmp_path)
    assert r.returncode == 0 and "1,000" in r.stdout and "md17" in r.stdout and "kcal/mol" in r.stdout


def test_data_info_makes_unit_mismatch_visible(tmp_path):
    r = sweep("data", "info", str(QUICKSTART_DATA), "--energy-unit", "Ha", cwd=tmp_path)
    assert r.returncode == 0
    out = " ".join(r.stdout.split())
    assert "Ha — spec (dataset.energy_unit)" in out
    assert "the file declares kcal/mol but the spec/option overrides it to Ha" in out
    assert "force RMS is 636 eV/Å if the energy unit really is Ha" in out
    r = sweep("data", "info", str(QUICKSTART_DATA), cwd=tmp_path)
    assert "unit warning" not in r.stdout and "kcal/mol — file (e_unit)" in " ".join(r.stdout.split())


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_search_space_validates(path):
    from orchestrator.spec.sweep import load_sweep_spec

    s = load_sweep_spec(path)
    assert s.space(), "a search space searches something"
    first = s.train_spec()  # the paper configuration comes first
    assert first.model.n_atom_basis == 64 and first.model.n_interactions == 3 and first.training.lr == 1e-3
    assert s.dataset.path is not None or s.dataset.download is not None


@pytest.mark.parametrize("command", [["status"], ["list"], ["ensemble", "--predict", "x.xyz"]])
def test_read_only_commands_refuse_a_missing_store_and_create_none(tmp_path, command):
    (tmp_path / "x.xyz").write_text("1\n\nH 0 0 0\n")
    r = sweep(*command, "--tracking-uri", f"sqlite:///{tmp_path / 'nowhere.db'}", cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no MLflow store at {tmp_path / 'nowhere.db'}" in lines[0], r.stderr
    assert not (tmp_path / "nowhere.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_train_refuses_atoms_on_top_of_each_other_and_writes_nothing(tmp_path):
    """Two atoms of one frame at the same position made a model with test force RMSE nan; now a one-line error."""
    d = np.load(QUICKSTART_DATA)
    R = d["R"].copy()
    R[7, 3] = R[7, 1]  # frame 8: atom 4 onto atom 2
    np.savez(tmp_path / "broken.npz", **{k: d[k] for k in d.files if k != "R"}, R=R)
    body = {"name": "broken", "dataset": {"path": "broken.npz", "n_train": 24, "n_val": 8, "n_test": 8},
            "training": {"max_epochs": 1}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(body))
    r = sweep("train", "broken.yaml", "--out", "model", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "broken.npz: frame 8: atoms 2 and 4 are 0 Å apart, closer than 0.1 Å" in lines[0]
    assert not (tmp_path / "model").exists()
