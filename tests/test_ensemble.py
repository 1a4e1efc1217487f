"""The vectorised ensemble, its std convention, recalibration, the ASE calculator, MLflow and `sweep ensemble`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICKSTART_DATA, random_molecules, small_model

from schnet_model import SchNetEnsembleCalculator, load_model, save_model
from schnet_model.calibration import (
    Calibration,
    calibration_metrics,
    fit_scale,
    fit_scale_oof,
    gaussian_nll,
    miscalibration_area,
    rankdata,
    spearman,
)
from schnet_model.ensemble import STD_DDOF, EnsembleError, SchNetEnsemble, block_pairs
from schnet_model.model_dir import ModelInfo
from schnet_model.units import energy_factor

TINY = {"n_atom_basis": 8, "n_filters": 8, "n_interactions": 2, "rbf_max": 6.0}


def member_dirs(tmp_path: Path, k: int = 3, elements=(1, 6, 7, 8), **kw) -> list[Path]:
    """k tiny float32 members (different seeds, non-trivial offsets) saved as model directories."""
    out = []
    for s in range(k):
        m = small_model(dtype=torch.float32, seed=s, **{**TINY, **kw})
        out.append(save_model(m, ModelInfo("kcal/mol", list(elements)), tmp_path / f"m{s}"))
    return out


# -- the ensemble against its members -------------------------------------------------------------
@pytest.mark.parametrize("cutoff", [None, 3.0])
def test_mean_equals_mean_of_fold_models_and_std_equals_numpy(tmp_path, cutoff):
    dirs = member_dirs(tmp_path, cutoff=cutoff)
    ens = SchNetEnsemble.from_model_dirs(dirs)
    mols = random_molecules(13, sizes=(3, 9, 5, 12))
    p = ens.predict(mols, calibrated=False)
    batch = mols.batch(np.arange(len(mols)), cutoff)
    outs = [load_model(d)[0](batch) for d in dirs]  # each member through SchNet.forward
    E = np.stack([o.energy.numpy() for o in outs])  # [k, N]
    F = np.stack([o.forces.numpy().astype(np.float64) for o in outs])  # [k, n_atoms, 3]
    np.testing.assert_allclose(p.energy, E.mean(0), rtol=0, atol=2e-3)  # float32 members, |E| ~ 1e3 kcal/mol
    np.testing.assert_allclose(p.forces, F.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p.energy_std, E.std(0, ddof=STD_DDOF), rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(p.forces_std, F.std(0, ddof=STD_DDOF), rtol=1e-3, atol=1e-4)
    assert STD_DDOF == 1 and not np.allclose(p.energy_std, E.std(0, ddof=0), rtol=1e-3)  # the convention matters at k=3


def test_std_summaries_follow_the_documented_convention(tmp_path):
    ens = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path)).to(dtype=torch.float64)
    mols = random_molecules(7, sizes=(4, 9))
    p = ens.predict(mols, calibrated=False, members=True)
    assert p.members_energy.shape == (3, 7) and p.members_forces.shape == (3, len(mols.Z), 3)
    np.testing.assert_allclose(p.energy_std, np.std(p.members_energy, axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(p.forces_std, np.std(p.members_forces, axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(p.forces_std_norm, np.linalg.norm(p.forces_std, axis=1), rtol=1e-12)
    for m in range(7):
        a0, a1 = mols.atom_ptr[m], mols.atom_ptr[m + 1]
        assert p.forces_std_max[m] == pytest.approx(p.forces_std_norm[a0:a1].max())
        assert p.forces_std_mean[m] == pytest.approx(p.forces_std_norm[a0:a1].mean())
    ens.calibration = Calibration(2.0, 3.0, "test")
    c = ens.predict(mols)
    np.testing.assert_allclose(c.energy_std, 2.0 * p.energy_std)
    np.testing.assert_allclose(c.forces_std_max, 3.0 * p.forces_std_max)
    np.testing.assert_allclose(c.energy, p.energy)


@pytest.mark.parametrize("cutoff", [None, 2.5])
def test_vectorised_pass_equals_plain_loop_and_batching_does_not_matter(tmp_path, cutoff):
    ens = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path, k=4, cutoff=cutoff)).to(dtype=torch.float64)
    mols = random_molecules(11, sizes=(2, 9, 5, 14))
    vec = ens.predict(mols, members=True, calibrated=False)
    loop = ens.predict(mols, members=True, calibrated=False, loop=True)
    one_by_one = ens.predict(mols, members=True, calibrated=False, memory_budget=1)  # one molecule per batch
    for other in (loop, one_by_one):
        np.testing.assert_allclose(other.members_energy, vec.members_energy, rtol=0, atol=1e-9)
        np.testing.assert_allclose(other.members_forces, vec.members_forces, rtol=0, atol=1e-9)
    # member m alone, through SchNet.forward in float64 (different code, same numbers)
    m1 = ens.member_models()[1].double()
    ref = m1(mols.batch(np.arange(len(mols)), cutoff, torch.float64))
    np.testing.assert_allclose(vec.members_energy[1], ref.energy.numpy(), rtol=1e-9, atol=1e-5)
    np.testing.assert_allclose(vec.members_forces[1], ref.forces.numpy(), rtol=1e-6, atol=1e-5)


def test_block_pairs_match_molecules_batch():
    mols = random_molecules(9, sizes=(3, 1, 5, 3, 7))
    ref = mols.batch(np.arange(9), None)
    pairs = block_pairs(mols.n_atoms, unordered=False)
    assert np.array_equal(pairs[:, 0], ref.idx_i.numpy()) and np.array_equal(pairs[:, 1], ref.idx_j.numpy())
    once = block_pairs(mols.n_atoms)
    assert np.array_equal(once, pairs[pairs[:, 0] < pairs[:, 1]])


def test_save_load_keeps_members_and_calibration(tmp_path):
    ens = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path), Calibration(1.5, 2.5, "test", {"n": 3}))
    d = ens.save(tmp_path / "ens")
    back = SchNetEnsemble.load(d)
    assert back.k == 3 and back.calibration.forces_scale == 2.5 and back.elements == [1, 6, 7, 8]
    mols = random_molecules(4)
    a, b = ens.predict(mols), back.predict(mols)
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.forces_std, b.forces_std)
    (d / "member_1" / "weights.safetensors").write_bytes(b"\x00" * 64)  # tampered weights are refused
    with pytest.raises(EnsembleError, match="sha256"):
        SchNetEnsemble.load(d)
    with pytest.raises(EnsembleError, match="at least 2 members"):
        SchNetEnsemble.from_model_dirs(member_dirs(tmp_path / "one", k=1))


def test_unseen_elements_are_named():
    ens = SchNetEnsemble([small_model(torch.float32, s, **TINY).state_dict() for s in range(2)],
                         small_model(**TINY).config, "kcal/mol", [1, 6, 8])
    with pytest.raises(EnsembleError, match=r"elements not seen in training: N \(Z=7\), Cl \(Z=17\); "
                                            r".* H \(Z=1\), C \(Z=6\), O \(Z=8\)"):
        ens.predict_arrays(np.array([7, 17, 1]), np.eye(3) * 1.2)


# -- recalibration -----------------------------------------------------------------------------------------
def test_fit_scale_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    std = rng.lognormal(0.0, 0.7, 50_000)
    err = rng.normal(0.0, 2.5 * std)
    assert fit_scale(err, std) == pytest.approx(2.5, rel=0.02)
    assert miscalibration_area(err, std) > 0.15 and miscalibration_area(err, 2.5 * std) < 0.01
    assert gaussian_nll(err, 2.5 * std) < gaussian_nll(err, std)


@pytest.mark.parametrize("k, c", [(3, 1.0), (5, 0.3), (5, 2.0)])
def test_oof_estimator_recovers_the_ensemble_error_scale(k, c):
    """Members y_j = y + b + δ_j with b ~ N(0, c²τ²), δ_j ~ N(0, τ²): the ensemble-mean error has
    variance (c² + 1/k)·τ² and E[std²] = τ², so the calibrated scale is sqrt(c² + 1/k)."""
    rng = np.random.default_rng(k)

    def draw(n):
        tau = rng.lognormal(0.0, 0.5, n)
        b = rng.normal(0.0, c * tau)
        members = b + rng.normal(0.0, tau[None], (k, n))  # [k, n] errors of each member
        return members

    pool = draw(60_000)
    oof = pool[rng.integers(0, k, pool.shape[1]), np.arange(pool.shape[1])]  # the held-out member's error
    test = draw(60_000)
    s = test.std(0, ddof=STD_DDOF)
    a, details = fit_scale_oof(oof, s, k)
    assert a == pytest.approx(np.sqrt(c**2 + 1 / k), rel=0.04), details
    eps = test.mean(0)  # ensemble-mean error on the test draws
    assert np.sqrt(np.mean(eps**2)) == pytest.approx(a * np.sqrt(np.mean(s**2)), rel=0.04)


def test_oof_scale_is_floored_at_one_over_sqrt_k_when_the_heldout_inputs_are_not_drawn_like_the_pool():
    """Test inputs from elsewhere (another trajectory) where the members disagree 3× more than on the pool: the
    decomposition's a² goes below 1/k (the old floor, 0.05, turned a usable std into σ = 0.05·std on aspirin's
    independent test run). The scale stops at 1/√k, the least that a shared + independent member error allows,
    and the fit says it was floored; on inputs drawn like the pool it is not."""
    from orchestrator.ensemble.calibrate import calibration_line, variance_inputs

    k, c = 5, 0.3
    rng = np.random.default_rng(7)

    def draw(n, spread=1.0):
        tau = spread * rng.lognormal(0.0, 0.5, n)
        return rng.normal(0.0, c * tau) + rng.normal(0.0, tau[None], (k, n))  # [k, n] member errors

    pool = draw(40_000)
    oof = pool[rng.integers(0, k, pool.shape[1]), np.arange(pool.shape[1])]
    a, d = fit_scale_oof(oof, draw(40_000).std(0, ddof=STD_DDOF), k)
    assert not d["floored"] and a == pytest.approx(np.sqrt(c**2 + 1 / k), rel=0.05)
    a, d = fit_scale_oof(oof, draw(40_000, spread=3.0).std(0, ddof=STD_DDOF), k)
    assert d["a2_raw"] < 0 and d["floored"] and a == pytest.approx(1 / np.sqrt(k)) and d["floor"] == a
    assert fit_scale_oof(oof, draw(10, spread=3.0).std(0, ddof=STD_DDOF), k, min_scale=0.05)[0] == 0.05

    # a single dataset.test_path is named "test" too: only the set held out of the dataset counts as pool-like
    tests = {"test": np.arange(5, 8), "hot": np.arange(8, 10)}
    assert variance_inputs(tests, "test")[0] == "test" and variance_inputs(tests, "test")[2]
    src, idx, pool_like = variance_inputs(tests, None)
    assert src == "test + hot" and idx.tolist() == [5, 6, 7, 8, 9] and not pool_like
    details = {"n_pool": 800, "variance_inputs": "test", "n_test": 1000, "variance_inputs_pool_like": False,
               "energy": {"a2_raw": -0.2, "floor": 1 / np.sqrt(5), "floored": True},
               "forces": {"a2_raw": 0.67, "floor": 1 / np.sqrt(5), "floored": False}}
    line = calibration_line(Calibration(1 / np.sqrt(5), 0.819, "oof-variance-decomposition", details))
    assert "ensemble variance on the inputs of test (1,000 molecules of test files, not drawn from dataset.path" in line
    assert ("; energy: a² = -0.2 < 1/k (the members disagree more on those inputs than on the pool: they are not "
            "drawn like it; dataset.n_test holds out inputs that are), so the scale is floored at 1/√k = 0.447") in line
    details |= {"variance_inputs_pool_like": True, "energy": {**details["energy"], "floored": False}}
    line = calibration_line(Calibration(0.9, 0.819, "oof-variance-decomposition", details))
    assert "(1,000 molecules held out of the dataset; their labels unused)" in line and "floored" not in line


def test_rank_metrics_against_definitions():
    assert np.array_equal(rankdata(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    x = np.random.default_rng(1).normal(size=500)
    assert spearman(x, x**3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    y = x + np.random.default_rng(2).normal(size=500)
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    m = calibration_metrics(y - x, np.ones(500))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((y - x) ** 2))) and m["rmv"] == pytest.approx(1.0)


def test_force_uncertainty_is_ranked_per_component_per_atom_and_per_molecule():
    """What an MD stop and an active-learning choice act on is an atom's ‖σ‖ and a molecule's largest one: the
    report ranks those too, not only the components."""
    from rich.console import Console

    from orchestrator.ensemble.report import PropertyErrors, build_report, report_table
    from schnet_model.calibration import Calibration

    rng = np.random.default_rng(0)
    atom_ptr = np.array([0, 3, 5, 9, 12])  # 4 molecules of 3, 2, 4, 3 atoms
    sigma = np.repeat(rng.uniform(0.1, 2.0, 12)[:, None], 3, axis=1)  # [12, 3] per-atom σ, the same on x, y, z
    error = sigma * np.sign(rng.normal(size=(12, 3)))  # |error| = σ on every component: ranks agree everywhere
    error[4, 1] = np.nan  # a missing reference component drops that atom from the per-atom ranking
    pf = PropertyErrors("forces", "eV/Å")
    pf.add(error, sigma, atom_ptr)
    ranked = pf.ranked()
    assert ranked["spearman_atom"] == pytest.approx(1.0) and ranked["spearman_molecule"] == pytest.approx(1.0)
    assert len(pf.atom[0][0]) == 11 and len(pf.molecule[0][0]) == 4
    flipped = PropertyErrors("forces", "eV/Å")  # errors large where σ is small: −1 per atom
    flipped.add(np.where(np.isnan(error), np.nan, 1.0 / sigma), sigma, atom_ptr)
    assert flipped.ranked()["spearman_atom"] == pytest.approx(-1.0)
    pe = PropertyErrors("energy", "eV")
    pe.add(rng.normal(size=4), np.ones(4))
    report = build_report([pe, pf], Calibration())
    assert "spearman_atom" not in report.metrics["energy"]["raw"]
    flat = report.flat()
    assert flat["ensemble_test_forces_spearman_atom_raw"] == flat["ensemble_test_forces_spearman_atom_calibrated"]
    console = Console(width=200, record=True)
    console.print(report_table(report, Calibration(), "t"))
    text = console.export_text()
    assert "Spearman per atom (‖σ‖, ‖err‖)" in text and "Spearman per molecule (max atom)" in text


# -- the ASE calculator ------------------------------------------------------------------------------------
def test_calculator_results_in_ase_units(tmp_path):
    from ase import Atoms


    ens = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path), Calibration(2.0, 3.0, "test"))
    d = ens.save(tmp_path / "ens")
    calc = SchNetEnsembleCalculator(d)
    mols = random_molecules(1, sizes=(6,))
    atoms = Atoms(numbers=mols.Z, positions=mols.R, calculator=calc)
    p = ens.predict(mols)
    f = energy_factor("kcal/mol", "eV")
    assert atoms.get_potential_energy() == pytest.approx(p.energy[0] * f, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), p.forces * f, rtol=1e-10)
    assert calc.get_property("energy_std") == pytest.approx(p.energy_std[0] * f)
    np.testing.assert_allclose(calc.get_property("forces_std"), p.forces_std * f)
    assert calc.results["forces_std_max"] == pytest.approx(p.forces_std_max[0] * f)
    kcal = SchNetEnsembleCalculator(ens, energy_unit="kcal/mol", calibrated=False)
    atoms.calc = kcal
    assert kcal.get_property("energy_std", atoms) == pytest.approx(p.energy_std[0] / 2.0)


# -- MLflow and the command line ----------------------------------------------------------------------------
def _fake_sweep(tmp_path: Path, k: int = 3, n_test: int = 40) -> tuple[str, str]:
    """An MLflow run tree as `sweep run` writes it (sweep → completed trial → k folds with models), tiny members;
    ``n_test`` molecules held out (0: a sweep with no test set)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.spec.sweep import SweepSpec
    from schnet_model.config import DatasetConfig
    from schnet_model.data.splits import SplitManifest, holdout, kfold
    from schnet_model.files import sha256 as checksum

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("tiny", artifact_location=str(tmp_path / "mlruns"))
    ds = DatasetConfig(path=QUICKSTART_DATA, n_train=20, n_val=10, n_test=n_test or None)
    pool, test = holdout(1000, n_test, 0, n_needed=30)
    pool = pool[:30]
    manifest = SplitManifest(str(QUICKSTART_DATA), checksum(QUICKSTART_DATA), 0, test, folds=kfold(pool, k, 0))
    spec = SweepSpec(name="tiny", dataset=ds)
    parent = c.create_run(exp, run_name="tiny-1", tags={"sweep.role": "sweep", "sweep.id": "tiny-20260101-000000",
                                                         "sweep.name": "tiny"}).info.run_id
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "spec.json").write_text(spec.model_dump_json())
    (tmp_path / "a" / "split.json").write_text(manifest.to_json())
    c.log_artifact(parent, str(tmp_path / "a" / "spec.json"))
    c.log_artifact(parent, str(tmp_path / "a" / "split.json"))
    trial = c.create_run(exp, run_name="trial", tags={"sweep.role": "trial", "sweep.id": "tiny-20260101-000000",
                                                      "sweep.trial_id": "abc", "sweep.status": "completed",
                                                      "mlflow.parentRunId": parent}).info.run_id
    for i, d in enumerate(member_dirs(tmp_path / "members", k=k, elements=(1, 6, 8))):
        fid = c.create_run(exp, tags={"sweep.role": "fold", "sweep.fold": str(i), "sweep.trial_id": "abc",
                                      "mlflow.parentRunId": trial}).info.run_id
        c.log_artifacts(fid, str(d), "model")
        c.set_terminated(fid)
    c.set_terminated(trial)
    c.set_tag(parent, "sweep.best_trial_id", "abc")
    c.set_tag(parent, "sweep.best_trial_run_id", trial)
    c.set_terminated(parent)
    return uri, parent


def _xyz(path: Path, idx, numbers=None, labelled: bool = False, fmt: str = "extxyz") -> Path:
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    z = np.load(QUICKSTART_DATA)
    frames = []
    for i in idx:
        a = Atoms(numbers=z["z"] if numbers is None else numbers, positions=z["R"][i])
        if labelled:  # calculator results: what extxyz, traj and db all store
            a.calc = SinglePointCalculator(a, energy=float(np.ravel(z["E"][i])[0]), forces=z["F"][i])
            a.info["energy_unit"] = "kcal/mol"
        frames.append(a)
    ase.io.write(path, frames, format=fmt)
    return path


def cli(*args: str):
    from typer.testing import CliRunner

    from orchestrator.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_sweep_ensemble_assembles_registers_predicts_and_round_trips(tmp_path, monkeypatch):
    import ase.io
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri, parent = _fake_sweep(tmp_path)
    inp = _xyz(tmp_path / "mols.xyz", [995, 996, 997])
    r = cli("ensemble", "tiny", "--tracking-uri", uri, "--predict", str(inp), "-o", "out/p.extxyz", "--save", "ens_dir")
    assert r.exit_code == 0, r.output
    assert "registered tiny-schnet-ensemble version 1 (alias champion)" in r.output and "miscal. area" in r.output
    c = MlflowClient(uri)
    run = c.get_run(parent)
    assert run.data.tags["sweep.ensemble_model_uri"] == "models:/tiny-schnet-ensemble/1"
    assert str(c.get_model_version_by_alias("tiny-schnet-ensemble", "champion").version) == "1"
    for key in ("ensemble_test_energy_nll_raw", "ensemble_test_energy_nll_calibrated",
                "ensemble_test_forces_spearman_raw", "ensemble_test_forces_miscal_area_calibrated",
                "ensemble_test_forces_spearman_atom_raw", "ensemble_test_forces_spearman_molecule_calibrated",
                "ensemble_forces_scale"):
        assert np.isfinite(run.data.metrics[key]), key
    assert "ensemble_reliability.png" in [a.path.split("/")[-1] for a in c.list_artifacts(parent, "plots")]
    cal = json.loads(Path(c.download_artifacts(parent, "ensemble_calibration.json", str(tmp_path))).read_text())
    assert cal["calibration"]["method"] == "oof-variance-decomposition" and cal["calibration"]["details"]["k"] == 3
    assert cal["calibration"]["details"]["energy"]["n_oof"] == 30 and cal["calibration"]["details"]["n_test"] == 40
    # outputs: extxyz with per-frame/per-atom fields + CSV, in the training unit
    frames = ase.io.read(tmp_path / "out" / "p.extxyz", ":")
    ens = SchNetEnsemble.load(tmp_path / "ens_dir")
    mols = ens.predict_arrays(np.concatenate([f.numbers for f in frames]),
                              np.concatenate([f.positions for f in frames]), np.array([0, 9, 18, 27]))
    assert len(frames) == 3 and frames[0].info["energy_unit"] == "kcal/mol"
    np.testing.assert_allclose([f.get_potential_energy() for f in frames], mols.energy, rtol=1e-12)
    np.testing.assert_allclose(frames[2].arrays["forces_std"], mols.forces_std[18:27], rtol=1e-6)
    assert [f.info["energy_std"] for f in frames] == pytest.approx(list(mols.energy_std), rel=1e-6)
    csv = (tmp_path / "out" / "p.csv").read_text().splitlines()
    assert csv[0].startswith("frame,n_atoms,formula,energy [kcal/mol],energy_std [kcal/mol]") and len(csv) == 4
    # round trip: models:/…@champion through the MLflow pyfunc gives the same numbers
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyf = mlflow.pyfunc.load_model("models:/tiny-schnet-ensemble@champion")
    import pandas as pd

    df = pyf.predict(pd.DataFrame({"numbers": [f.numbers.tolist() for f in frames],
                                   "positions": [f.positions.tolist() for f in frames]}))
    np.testing.assert_allclose(df["energy"].to_numpy(), mols.energy, rtol=1e-12)
    np.testing.assert_allclose(df["energy_std"].to_numpy(), mols.energy_std, rtol=1e-12)
    np.testing.assert_allclose(np.array(df["forces"][1]), mols.forces[9:18], rtol=1e-10)
    # the CLI with the registered model and a unit conversion; a second call reuses the registered version
    r = cli("ensemble", "--model", "models:/tiny-schnet-ensemble@champion", "--tracking-uri", uri,
            "--predict", str(inp), "-o", "ev.extxyz", "--unit", "eV")
    assert r.exit_code == 0, r.output
    ev = ase.io.read(tmp_path / "ev.extxyz", ":")
    np.testing.assert_allclose([f.get_potential_energy() for f in ev], mols.energy * energy_factor("kcal/mol", "eV"),
                               rtol=1e-12)
    r = cli("ensemble", "--tracking-uri", uri, "--evaluate",
            str(_xyz(tmp_path / "lab.extxyz", [990, 991, 992, 993], labelled=True)))
    assert r.exit_code == 0, r.output
    assert "models:/tiny-schnet-ensemble/1" in r.output and "coverage ±2σ" in r.output and "energy MAE" in r.output
    assert not (tmp_path / "lab.ensemble.extxyz").exists()  # --evaluate writes only with -o


def test_a_sweep_without_test_molecules_still_becomes_an_ensemble(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri, parent = _fake_sweep(tmp_path, n_test=0)
    lab = _xyz(tmp_path / "lab.extxyz", [990, 991, 992, 993], labelled=True)
    r = cli("ensemble", "tiny", "--tracking-uri", uri, "--evaluate", str(lab))
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert ("stds not recalibrated (scale 1): no test molecules: nothing held out to measure the ensemble variance on; "
            "give dataset.n_test or dataset.test_path to the sweep") in out
    assert "recalibration identity (energy ×1, forces ×1)" in out
    assert "lab.extxyz: calibration report" in out and "energy MAE" in out and "coverage ±2σ" in out
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    assert c.get_run(parent).data.tags["sweep.ensemble_model_uri"] == "models:/tiny-schnet-ensemble/1"
    cal = json.loads(Path(c.download_artifacts(parent, "ensemble_calibration.json", str(tmp_path))).read_text())
    assert cal["calibration"]["method"] == "identity" and cal["test_sets"] == {}
    r = cli("ensemble", "tiny", "--tracking-uri", uri, "--predict", str(lab), "-o", "p.extxyz")
    assert r.exit_code == 0 and (tmp_path / "p.extxyz").is_file(), r.output


@pytest.mark.parametrize("fmt, suffix", [("traj", ".traj"), ("db", ".db"), ("extxyz", ".extxyz")])
def test_predict_reads_ase_formats_alike(tmp_path, fmt, suffix):
    from orchestrator.ensemble.ensemble_command import predict_file

    ens = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path, elements=(1, 6, 8)))
    src = _xyz(tmp_path / f"in{suffix}", [1, 2, 3, 4], labelled=True, fmt=fmt)
    # ASE's db keeps calculator results but not info['energy_unit']: declare it (a declaring file would win)
    res = predict_file(ens, src, tmp_path / "o.extxyz", input_unit="kcal/mol" if fmt == "db" else "eV", max_atoms=10)
    ref = _xyz(tmp_path / "ref.extxyz", [1, 2, 3, 4], labelled=True)
    res_ref = predict_file(ens, ref, tmp_path / "r.extxyz")
    assert res["molecules"] == 4 and res["reference_unit"] == "kcal/mol" and res["with_reference"] == 4
    assert res["forces_mae"] == pytest.approx(res_ref["forces_mae"], rel=1e-6)  # float32, other batches
    assert res["energy_mae"] == pytest.approx(res_ref["energy_mae"], rel=1e-6)
    assert (len((tmp_path / "o.extxyz").read_text().splitlines())
            == len((tmp_path / "r.extxyz").read_text().splitlines()) == 44)


def test_errors_are_one_line_and_leave_no_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ens = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path, elements=(1, 6, 8)))
    ens.save(tmp_path / "ens")
    # an unseen element in frame 3 of a file read in chunks of one frame: frames 1-2 were predicted, nothing is written
    good = _xyz(tmp_path / "good.xyz", [1, 2])
    bad = _xyz(tmp_path / "bad.xyz", [3], numbers=np.array([6, 6, 7, 1, 1, 1, 1, 1, 17]))
    (tmp_path / "mixed.xyz").write_text(good.read_text() + bad.read_text())
    from orchestrator.ensemble.ensemble_command import predict_file
    from orchestrator.ensemble.source import EnsembleCommandError

    with pytest.raises(EnsembleError,
                       match=r"mixed.xyz: frame 3: elements not seen in training: N \(Z=7\), Cl \(Z=17\)"):
        predict_file(ens, tmp_path / "mixed.xyz", tmp_path / "o.extxyz", max_atoms=9)
    truncated = tmp_path / "trunc.xyz"
    truncated.write_text("\n".join(good.read_text().splitlines()[:16]) + "\n")
    cases = [
        (["ensemble", "ens", "--predict", str(tmp_path / "mixed.xyz"), "-o", "o.extxyz"],
         "frame 3: elements not seen in training: N (Z=7), Cl (Z=17); "
         "the ensemble was trained on H (Z=1), C (Z=6), O (Z=8)"),
        (["ensemble", "ens", "--predict", str(truncated), "-o", "o.extxyz"],
         "trunc.xyz: frame 2: malformed or truncated"),
        (["ensemble", "nosuch", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--predict", str(good),
          "-o", "o.extxyz"],
         f"no MLflow store at {tmp_path / 'none.db'}"),
        (["ensemble", "nosuch", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--predict", str(good),
          "-o", "o.extxyz"],
         "no finished sweep named 'nosuch'"),
        (["ensemble", "ens", "--predict", str(tmp_path / "missing.xyz"), "-o", "o.extxyz"],
         "missing.xyz: no such file"),
        (["ensemble", "ens", "--predict", str(good), "-o", "o.extxyz", "--unit", "kcal"],
         "--unit: unknown energy unit 'kcal'"),
    ]
    from orchestrator.tracking.store import open_client

    open_client(f"sqlite:///{tmp_path / 'm.db'}").search_experiments()  # an existing store without sweeps
    for args, expected in cases:
        r = cli(*args)
        assert r.exit_code != 0, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, r.stderr)
        assert not (tmp_path / "none.db").exists(), "a read-only command created a tracking store"
        assert not (tmp_path / "o.extxyz").exists() and not (tmp_path / "o.csv").exists()
        assert not list(tmp_path.glob(".o.*")), "temporary files left behind"
    with pytest.raises(EnsembleCommandError, match="would overwrite the input"):
        predict_file(ens, good, good)


def test_md_example_stops_when_the_force_std_crosses_the_threshold(tmp_path):
    import importlib.util

    import ase.io
    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("md_uncertainty", ROOT / "examples" / "md_uncertainty.py")
    md = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(md)
    d = SchNetEnsemble.from_model_dirs(member_dirs(tmp_path, elements=(1, 6, 8))).save(tmp_path / "ens")
    kw = dict(start=None, molecule="CH3CH2OH", temperature=300.0, timestep_fs=0.5, friction_per_fs=0.01, seed=0,
              every=1)
    assert md.run(d, steps=3, threshold=1e9, out=tmp_path / "a.extxyz", **kw) == 3  # never crossed: all steps
    assert len(ase.io.read(tmp_path / "a.extxyz", ":")) == 4
    assert md.run(d, steps=3, threshold=1e-9, out=tmp_path / "b.extxyz", **kw) == 0  # crossed at once
    frame = ase.io.read(tmp_path / "b.extxyz", 0)
    assert frame.info["forces_std_max"] > 1e-9 and frame.arrays["forces_std_norm"].shape == (9,)


def test_prediction_input_with_atoms_on_top_of_each_other_is_refused(tmp_path):
    import ase.io
    from ase import Atoms

    from orchestrator.ensemble.io import InputError, read_chunks

    good = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                                   [0.63, -0.63, -0.63]])
    bad = good.copy()
    bad.positions[4] = bad.positions[1] + 0.01
    ase.io.write(tmp_path / "mols.xyz", [good, bad], format="extxyz")
    _, chunks = read_chunks(tmp_path / "mols.xyz")
    with pytest.raises(InputError, match=r"mols\.xyz: frame 2: atoms 2 and 5 are 0\.0173 Å apart, closer than 0\.1 Å"):
        list(chunks)
