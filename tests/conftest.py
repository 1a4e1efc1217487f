"""Shared fixtures: small real molecules and helpers."""

from __future__ import annotations

import copy
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from schnet_model import ModelConfig, Molecules, SchNet

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = ROOT / "data" / "ethanol_gfn2xtb_500K.npz"
SHARED = ROOT.parent / "shared" / "data"


def random_molecules(n_mols: int, sizes: tuple[int, ...] = (3, 9, 5), seed: int = 0, forces: bool = True) -> Molecules:
    """Random molecules with sensible interatomic distances (atoms on a jittered grid), H/C/N/O."""
    rng = np.random.default_rng(seed)
    Z, R, ptr, E = [], [], [0], []
    for m in range(n_mols):
        n = sizes[m % len(sizes)]
        grid = np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3)
        pos = grid[rng.permutation(27)[:n]] * 1.3 + rng.normal(0, 0.15, (n, 3))
        Z.append(rng.choice([1, 6, 7, 8], n))
        R.append(pos)
        ptr.append(ptr[-1] + n)
        E.append(rng.normal(-100.0 * n, 1.0))
    Zc, Rc = np.concatenate(Z), np.concatenate(R)
    return Molecules(
        Z=Zc, R=Rc, atom_ptr=np.array(ptr), E=np.array(E),
        F=rng.normal(0, 1, Rc.shape) if forces else None, energy_unit="kcal/mol", name="random",
    )


def small_model(dtype: torch.dtype = torch.float64, seed: int = 0, **kw) -> SchNet:
    """A small SchNet with non-trivial offsets."""
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"n_atom_basis": 16, "n_filters": 16, "n_interactions": 2, "rbf_max": 10.0, **kw})
    m = SchNet(cfg).to(dtype)
    ref = np.zeros(100)
    ref[[1, 6, 7, 8]] = [-0.5, -37.8, -54.6, -75.0]
    m.offsets.set(ref, 2.0)
    return m


@pytest.fixture
def quickstart_data() -> Path:
    return QUICKSTART_DATA


TINY_MODEL = {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 1, "rbf_max": 6.0}


def sweep_cli(*args: str, cwd: Path, timeout: float, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    """``sweep ARGS`` in its own process (Ray never starts inside pytest), output captured, 200 columns wide."""
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**(os.environ if env is None else env), "COLUMNS": "200"})


def write_sweep_spec(path: Path, body: dict, **over) -> Path:
    """A tiny sweep spec on the quickstart data at ``path``: a tiny model, k = 2, SQLite tracking
    and ``sweeps`` storage unless ``body`` says otherwise; then ``section__key=value`` (one key
    of a section) or ``section=value`` (a whole section) overrides."""
    spec = {"model": dict(TINY_MODEL), "cv": {"k": 2}, "tracking": {"uri": "sqlite:///mlflow.db"},
            "storage": "sweeps", **copy.deepcopy(body)}
    spec["dataset"] = {"path": str(QUICKSTART_DATA), **spec.get("dataset", {})}
    for k, v in over.items():
        sec, _, key = k.partition("__")
        spec[sec] = {**spec[sec], key: v} if key else v
    path.write_text(yaml.safe_dump(spec))
    return path


def _quick_ensemble(out: Path, make, epochs: int) -> Path:
    """Three members ``make()`` trained briefly on the quickstart ethanol, saved as an ensemble directory at ``out``."""
    from schnet_model import DatasetConfig, Trainer, TrainingConfig
    from schnet_model.data.load import load_dataset
    from schnet_model.ensemble import Ensemble
    from schnet_model.model_dir import ModelInfo

    data = load_dataset(DatasetConfig(path=QUICKSTART_DATA)).molecules
    rng = np.random.default_rng(0)
    models = []
    for s in range(3):
        idx = rng.permutation(900)
        torch.manual_seed(s)
        m = make()
        cfg = TrainingConfig(max_epochs=epochs, batch_size=16, lr=3e-3, seed=s, early_stopping_patience=None)
        Trainer(m, data.subset(idx[:160]), data.subset(idx[160:200]), cfg).fit()
        models.append(m)
    return Ensemble.from_models(models, [ModelInfo("kcal/mol", [1, 6, 8])] * 3).save(out)


@pytest.fixture(scope="session")
def trained_ensemble(tmp_path_factory) -> Path:
    """A 3-member ensemble trained briefly on the quickstart ethanol (forces that mean something), saved as a
    directory, float64 weights: what `sweep ensemble --save DIR` writes, small enough for MD tests."""
    # 18 epochs × 10 steps stays below the 200 fast-path calls after which the kernels compile (20–30 s)
    return _quick_ensemble(tmp_path_factory.mktemp("ensemble") / "ens", lambda: SchNet(ModelConfig(
        n_atom_basis=16, n_filters=16, n_interactions=2, rbf_max=6.0, cutoff=5.0)), epochs=18)


@pytest.fixture(scope="session")
def painn_ensemble(tmp_path_factory) -> Path:
    """As :func:`trained_ensemble`, of three small PaiNN members (16 features, 2 blocks, 5 Å cutoff)."""
    from schnet_model import PaiNN, PaiNNConfig

    return _quick_ensemble(tmp_path_factory.mktemp("painn_ensemble") / "ens", lambda: PaiNN(PaiNNConfig(
        n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=5.0)), epochs=10)


def epochs_logged(db: Path) -> int:
    """The most epochs any trial run of the MLflow store ``db`` has logged (its val_loss_mean history), read-only."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute("select max(step) from metrics where key = 'val_loss_mean'").fetchone()
        return int(row[0] or 0)
    except sqlite3.Error:
        return 0
