"""Active learning: selection, exploration, versioned datasets, `sweep select` and a one-round `sweep learn` (real Ray,
MLflow, GFN2-xTB labels)."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from conftest import QUICKSTART_DATA, sweep_cli, write_sweep_spec
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.learn.campaign import LearnError, LearnOptions
from orchestrator.learn.dataset import Version, grow, initial
from orchestrator.learn.select import SelectError, choose, descriptors, parse_threshold, score, threshold_eV
from schnet_model.data.load import read_dataset
from schnet_model.data.molecules import DataError
from schnet_model.ensemble import SchNetEnsemble
from schnet_model.explore import explore
from schnet_model.files import sha256
from schnet_model.units import energy_factor

runner = CliRunner()


def cli(*args: str):
    """`sweep` in this process: for commands that start no Ray."""
    return runner.invoke(app, list(args))


sweep = partial(sweep_cli, timeout=600)  # sweep ARGS, cwd=…: the CLI in its own process

def ethanol_frames(n: int, start: int = 0) -> list[Atoms]:
    with np.load(QUICKSTART_DATA) as d:
        return [Atoms(numbers=d["z"], positions=d["R"][i]) for i in range(start, start + n)]


# -- selection ----------------------------------------------------------------------------------------
def test_uncertainty_selection_takes_one_of_each_uncertain_group_not_near_duplicates():
    rng = np.random.default_rng(0)
    # group A: 5 near-duplicates with the highest scores; group B: 10 with middling scores; C: low scores
    desc = np.concatenate([rng.normal(0, 0.01, (5, 4)), rng.normal(5, 0.01, (10, 4)), rng.normal(-5, 0.01, (10, 4))])
    scores = np.concatenate([10 - 0.1 * np.arange(5), 5 - 0.1 * np.arange(10), 1 - 0.01 * np.arange(10)])
    picked = choose(scores, desc, 2, "uncertainty", seed=0)
    assert picked[0] in range(5) and picked[1] in range(5, 15)  # one of A (most uncertain first), one of B
    assert np.argsort(-scores)[:2].tolist() == [0, 1]  # what plain top-N would have taken: two of A
    # all of them
    assert choose(scores, desc, 25, "uncertainty").tolist() == np.argsort(-scores, kind="stable").tolist()


def test_uncertainty_selection_takes_a_typical_member_of_an_uncertain_region_not_its_outlier():
    rng = np.random.default_rng(1)
    # 9 similar geometries (score 1) and one strained outlier 3 units away, the most uncertain (score 2)
    desc = np.concatenate([rng.normal(0, 0.05, (9, 3)), [[3.0, 0.0, 0.0]]])
    scores = np.concatenate([np.full(9, 1.0), [2.0]])
    picked = choose(scores, desc, 1, "uncertainty", seed=0)
    assert picked.tolist() != [9] and picked[0] in range(9)  # nearest the uncertainty-weighted centre
    # the weights pull the centre: with the outlier weighted 30×, it is the pick
    assert choose(np.concatenate([np.full(9, 1.0), [30.0]]), desc, 1, "uncertainty").tolist() == [9]


def test_a_smaller_pool_factor_chooses_more_uncertain_candidates_still_one_per_region():
    rng = np.random.default_rng(2)
    # 60 candidates along one coordinate, uncertainty rising with it; 3 per region of 20 near-duplicates each
    desc = np.repeat(np.arange(20.0), 3)[:, None] + rng.normal(0, 0.01, (60, 1))
    scores = 0.1 + desc[:, 0] / 20 + rng.uniform(0, 0.01, 60)
    wide, narrow, top = (choose(scores, desc, 3, "uncertainty", seed=0, pool_factor=b) for b in (10, 3, 1))
    assert np.median(scores[wide]) < np.median(scores[narrow]) < np.median(scores[top])
    assert top.tolist() == np.argsort(-scores)[:3].tolist()  # pool factor 1: the n most uncertain
    assert len(set(np.round(desc[narrow, 0]).tolist())) == 3  # clustered: three different regions, not one's duplicates
    with pytest.raises(SelectError, match=r"--pool-factor: must be ≥ 1 \(got 0\)"):
        choose(scores, desc, 3, "uncertainty", pool_factor=0)
    import orchestrator.cli
    from orchestrator.learn.select import POOL_FACTOR

    # the CLI states the default without importing torch for --help: it must say the default the selection uses
    assert Path(orchestrator.cli.__file__).read_text().count(f"default {POOL_FACTOR})") == 2


def test_candidates_above_the_upper_trust_level_are_left_out_unless_too_few_are_below_it():
    scores = np.array([5.0, 0.9, 0.8, 3.0, 0.1, 0.5])  # 5.0 and 3.0: where exploration runs crossed the threshold
    desc = np.arange(6.0)[:, None]
    assert choose(scores, desc, 2, "uncertainty", max_score=1.0).tolist() == [1, 5]  # groups {1, 2} and {4, 5}
    # + the least uncertain above
    assert choose(scores, desc, 5, "uncertainty", max_score=1.0).tolist() == [1, 2, 5, 4, 3]
    assert sorted(choose(scores, desc, 6, "random", max_score=1.0).tolist()) == list(range(6))  # random: the whole pool


def test_stochastic_selection_draws_in_proportion_to_the_variance_below_the_trust_level():
    scores = np.concatenate([np.full(50, 1.0), np.full(50, 3.0), [9.0]])  # 9.0: above the trust level
    desc = np.zeros((101, 2))
    draws = [choose(scores, desc, 10, "stochastic", seed=s, max_score=5.0) for s in range(200)]
    assert all(len(set(d.tolist())) == 10 and 100 not in d for d in draws)  # no repeats, nothing above the trust level
    high = np.mean([np.mean(d >= 50) for d in draws])
    assert 0.8 < high < 0.95  # p ∝ σ²: 9 : 1 per candidate (without replacement a little less than 0.9)
    assert draws[0].tolist() == choose(scores, desc, 10, "stochastic", seed=0, max_score=5.0).tolist()  # seeded
    assert np.all(np.diff(scores[draws[0]]) <= 0)  # most uncertain first, like the other strategies


def test_random_selection_is_seeded_and_without_repeats():
    scores, desc = np.arange(50.0), np.zeros((50, 3))
    a, b, c = (choose(scores, desc, 10, "random", seed=s) for s in (1, 1, 2))
    assert len(set(a.tolist())) == 10 and a.tolist() == b.tolist() and a.tolist() != c.tolist()


@pytest.mark.parametrize(("n", "strategy", "message"), [
    (0, "uncertainty", "select at least one molecule"),
    (11, "uncertainty", "cannot select 11 molecules from 10 candidates"),
    (2, "greedy", "unknown strategy 'greedy'; expected one of uncertainty, stochastic, random"),
])
def test_bad_selection_requests_are_one_line_errors(n, strategy, message):
    with pytest.raises(SelectError, match=message):
        choose(np.arange(10.0), np.zeros((10, 2)), n, strategy)


def test_descriptors_ignore_rotation_and_translation_and_mixed_molecules_ignore_atom_order():
    a = ethanol_frames(1)[0]
    b = a.copy()
    b.rotate(73, (1, 2, 3), center="COM")
    b.translate((4.0, -2.0, 1.0))
    np.testing.assert_allclose(descriptors([a, b])[0], descriptors([a, b])[1], atol=1e-12)
    water = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    perm = a[[3, 0, 8, 1, 2, 7, 4, 6, 5]]
    d = descriptors([a, water, perm])  # mixed molecules: sorted Coulomb-matrix eigenvalues, padded
    assert d.shape == (3, 9) and np.allclose(d[0], d[2]) and not np.allclose(d[0], d[1])


# -- exploration and scoring --------------------------------------------------------------------------
def test_exploration_is_seeded_and_stops_at_the_threshold(trained_ensemble):
    ens = SchNetEnsemble.load(trained_ensemble)
    starts = ethanol_frames(2)
    a = explore(ens, starts, 800.0, 20, threshold=1e9, seed=3, every=5)
    b = explore(ens, starts, 800.0, 20, threshold=1e9, seed=3, every=5)
    assert [len(t.frames) for t in a] == [5, 5] and all(t.stopped_at is None for t in a)
    np.testing.assert_array_equal(a[1].frames[-1].positions, b[1].frames[-1].positions)
    assert not np.allclose(a[0].frames[-1].positions, a[1].frames[-1].positions)  # independent runs
    stopped = explore(ens, starts[:1], 800.0, 20, threshold=1e-9, seed=3)[0]
    assert stopped.stopped_at == 0 and len(stopped.frames) == 1
    s = score(ens, [f for t in a for f in t.frames])
    # the score is the calibrated max per-atom force std, in eV/Å, the same number the MD recorded
    np.testing.assert_allclose(s.score, [f.info["forces_std_max"] for t in a for f in t.frames], rtol=1e-6)


def test_a_temperature_ladder_is_shared_out_over_the_runs_and_counted_in_the_selection(trained_ensemble):
    from orchestrator.learn.select import parse_temperatures, select

    ens = SchNetEnsemble.load(trained_ensemble)
    starts = ethanol_frames(5)
    ladder = explore(ens, starts, [300.0, 1500.0], 200, threshold=1e9, seed=3, every=10)
    assert [t.frames[0].info["thermostat_K"] for t in ladder] == [300.0, 1500.0, 300.0, 1500.0, 300.0]
    # run i keeps its own random stream: the 300 K runs are the runs of a 300 K exploration
    alone = explore(ens, starts, 300.0, 200, threshold=1e9, seed=3, every=10)
    np.testing.assert_array_equal(ladder[2].frames[-1].positions, alone[2].frames[-1].positions)
    hot = np.mean([f.info["temperature_K"] for t in ladder[1::2] for f in t.frames[5:]])
    cold = np.mean([f.info["temperature_K"] for t in ladder[::2] for f in t.frames[5:]])
    assert cold < 700 < hot  # each run thermalised at its own thermostat (instantaneous T, 9 atoms: noisy)
    frames = [f for t in ladder for f in t.frames]
    stats = select(ens, frames, 6, "random", seed=0).stats()
    assert stats["candidates_300K"] == 3 * 21 and stats["candidates_1500K"] == 2 * 21
    assert stats["selected_300K"] + stats["selected_1500K"] == 6
    assert "candidates_300K" not in select(ens, [f for t in alone for f in t.frames], 6, "random").stats()
    assert parse_temperatures(800) == [800.0] and parse_temperatures((500, 1000.0)) == [500.0, 1000.0]
    for bad, msg in ((-5.0, "--temperature: -5.0; expected a temperature in K > 0"), ([], "at least one temperature"),
                     ([500.0, 0.0], "--temperature: 0.0;")):
        with pytest.raises(SelectError, match=msg):
            parse_temperatures(bad)
    with pytest.raises(LearnError, match="--temperature: -1"):
        LearnOptions(temperature=[500.0, -1.0])
    assert LearnOptions(temperature=750).temperature == [750.0]  # a campaign.json of before the ladder resumes


def test_a_relative_threshold_follows_the_ensembles_own_uncertainty_and_its_recalibration(trained_ensemble):
    ens = SchNetEnsemble.load(trained_ensemble)
    data = ethanol_frames(30)
    median = float(np.median(score(ens, data).score))  # eV/Å
    assert threshold_eV("3x", ens, data) == pytest.approx(3 * median) and threshold_eV("0.7", ens, data) == 0.7
    ens.calibration = replace(ens.calibration, forces_scale=2 * ens.calibration.forces_scale)  # a recalibration ×2
    assert threshold_eV("3x", ens, data) == pytest.approx(6 * median)  # moves with it: the same raw disagreement
    assert threshold_eV("0.7", ens, data) == 0.7
    for bad, msg in (("4y", "expected eV/Å"), ("-1", "must be > 0"), ("0x", "must be > 0")):
        with pytest.raises(SelectError, match=msg):
            parse_threshold(bad)


# -- versioned datasets -------------------------------------------------------------------------------
def test_a_round_adds_labelled_molecules_in_the_datasets_unit_with_provenance(tmp_path):
    mols = read_dataset(QUICKSTART_DATA, energy_unit="kcal/mol")
    ev = energy_factor("kcal/mol", "eV")
    mols.E, mols.F, mols.energy_unit = mols.E * ev, mols.F * ev, "eV"
    v0 = initial(mols, np.arange(10, 0, -1), tmp_path / "d0.npz", "GFN2-xTB (tblite)")
    with np.load(QUICKSTART_DATA) as d:
        lab = {"R": d["R"][100:103], "z": d["z"], "E": d["E"][100:103], "F": d["F"][100:103]}  # kcal/mol, as labelled
    v1 = grow(v0, lab, tmp_path / "d1.npz", round_=1, chosen_by="sweep-r0", strategy="uncertainty", method="gfn2-xtb")
    assert (v0.n_molecules, v1.n_molecules, v1.added, v1.parent_sha256) == (10, 13, 3, v0.sha256)
    assert v1.sha256 == sha256(tmp_path / "d1.npz") and Version(**json.loads(v1.sidecar().read_text())) == v1
    back = read_dataset(tmp_path / "d1.npz")
    assert back.energy_unit == "eV" and len(back) == 13
    np.testing.assert_allclose(back.E[10:], lab["E"] * ev, rtol=1e-12)
    with np.load(tmp_path / "d1.npz") as d:
        assert d["round"].tolist() == [0] * 10 + [1] * 3
    with pytest.raises(DataError, match="labelled molecules have atoms"):
        grow(v1, {**lab, "z": lab["z"][::-1]}, tmp_path / "d2.npz", round_=2, chosen_by="s", strategy="random",
             method="gfn2-xtb")


# -- sweep select -------------------------------------------------------------------------------------
def test_sweep_select_writes_the_chosen_molecules_with_predictions_and_refuses_bad_input(tmp_path, trained_ensemble,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    ase.io.write("cands.xyz", ethanol_frames(40), format="extxyz")
    r = cli("select", str(trained_ensemble), "--candidates", "cands.xyz", "-n", "5", "-o", "sel.extxyz")
    assert r.exit_code == 0, r.output
    sel = ase.io.read("sel.extxyz", ":")
    assert len(sel) == 5 and "not logged in MLflow" in r.output
    stds = [a.info["forces_std_max"] for a in sel]
    assert stds == sorted(stds, reverse=True) and sel[0].arrays["forces_pred"].shape == (9, 3)
    assert sel[0].calc is None  # predictions are not labels: nothing reads them back as reference forces
    ref = score(SchNetEnsemble.load(trained_ensemble), ethanol_frames(40))
    assert np.isclose(stds[0], ref.score.max())  # the most uncertain candidate is always chosen
    # label the choice with GFN2-xTB (the default method), as the README says
    r = cli("data", "generate", "--relabel", "sel.extxyz", "-o", "lab.npz")
    assert r.exit_code == 0 and "wrote 5 frames (GFN2-xTB (tblite), kcal/mol, Å)" in r.output, r.output
    from schnet_model.data.generate import label_gfn2

    with np.load("lab.npz") as lab, np.load(QUICKSTART_DATA) as d:
        k = int(sel[2].info["candidate"])  # candidates were frames 0..39 of the quickstart file, labelled by GFN2-xTB
        np.testing.assert_allclose(lab["E"][2], d["E"][k], atol=1e-6)
        np.testing.assert_allclose(lab["F"][2], d["F"][k], atol=1e-2)  # SCF convergence, not the geometry
        assert np.isclose(label_gfn2(lab["z"], lab["R"][0])[0], lab["E"][0])
    r = cli("data", "generate", "--relabel", "cands.xyz", "--method", "dft", "-o", "x.npz")
    assert r.exit_code == 2 and "--method: unknown method 'dft'" in r.stderr and not Path("x.npz").exists()
    for args, expected in [
        (("--candidates", "nope.xyz"), "nope.xyz: no such file"),
        ((), "give --candidates FILE or --explore FILE"),
        (("--candidates", "cands.xyz", "--explore", "cands.xyz"), "give --candidates FILE or --explore FILE"),
        (("--candidates", "cands.xyz", "-n", "41"), "cannot select 41 molecules from 40 candidates"),
        (("--candidates", "cands.xyz", "--strategy", "best"), "--strategy: 'best'"),
    ]:
        r = cli("select", str(trained_ensemble), *args, "-o", "bad.extxyz")
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and expected in r.stderr, (args, r.output)
        assert not Path("bad.extxyz").exists()


def test_sweep_select_does_not_log_under_a_sweep_run_the_store_does_not_hold(tmp_path, trained_ensemble, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    ens = shutil.copytree(trained_ensemble, tmp_path / "ens")  # as if saved from another machine's sweep
    man = json.loads((ens / "ensemble.json").read_text())
    man["meta"].update(sweep_run_id="c355336ecaa44b54bc633237d9deeb73", experiment="elsewhere")
    (ens / "ensemble.json").write_text(json.dumps(man))
    ase.io.write("cands.xyz", ethanol_frames(20), format="extxyz")
    r = cli("select", str(ens), "--candidates", "cands.xyz", "-n", "3", "--strategy", "stochastic", "-o", "sel.extxyz",
            "--tracking-uri", f"sqlite:///{tmp_path / 'here.db'}")
    assert r.exit_code == 0, r.output
    assert "not logged in MLflow (the ensemble's sweep run c355336ecaa44b54bc633237d9deeb73 is not in" in r.output
    assert len(ase.io.read("sel.extxyz", ":")) == 3 and not (tmp_path / "here.db").exists()


# -- sweep learn, for real ----------------------------------------------------------------------------
def test_sweep_learn_runs_a_round_and_resumes_at_a_round_boundary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with np.load(QUICKSTART_DATA) as d:  # a fixed "hot" test set: 20 frames the starting pool never contains
        np.savez(tmp_path / "test.npz", R=d["R"][-20:], z=d["z"], E=d["E"][-20:], F=d["F"][-20:], e_unit="kcal/mol")
    spec = write_sweep_spec(tmp_path / "al.yaml", {
        "name": "al", "dataset": {"n_train": 16, "n_val": 8, "test_path": {"hot": str(tmp_path / "test.npz")}},
        "training": {"max_epochs": 2, "batch_size": 8}, "search": {"num_samples": 1, "scheduler": "none"}})
    r = sweep("learn", str(spec), "--rounds", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]  # zero rounds: train and evaluate the starting data
    # tiny 2-epoch models: every std is large
    args = ("learn", str(spec), "--rounds", "1", "--per-round", "3", "--trajectories", "2", "--steps", "10", "--every",
            "2", "--temperature", "600", "--temperature", "900", "--threshold", "1000")
    r = sweep(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    camp_dir = max(Path("campaigns").glob("al-learn-*"))
    camp = json.loads((camp_dir / "campaign.json").read_text())
    assert camp["status"] == "finished" and [x["dataset"]["n_molecules"] for x in camp["rounds"]] == [24, 27]
    assert "hot_forces_mae" in camp["rounds"][1]["metrics"] and (
        "hot_forces_coverage68_calibrated" in camp["rounds"][1]["metrics"])
    chose = camp["rounds"][0]["selection"]  # what round 0 chose from, also in the state file
    assert chose["threshold_eV_per_A"] == 1000 and chose["selected"] == 3 and chose["candidates"] >= 3
    assert chose["candidates_600K"] + chose["candidates_900K"] == chose["candidates"]  # one run at each temperature
    assert chose["selected_600K"] + chose["selected_900K"] == 3 and camp["options"]["temperature"] == [600.0, 900.0]
    with np.load(camp_dir / "data_r1.npz") as d1, np.load(tmp_path / "test.npz") as t:
        assert d1["round"].tolist() == [0] * 24 + [1] * 3
        assert not any((np.abs(t["R"] - x).max((1, 2)) < 1e-9).any() for x in d1["R"])  # nothing of the test set
    v1 = json.loads((camp_dir / "data_r1.json").read_text())
    assert v1["parent_sha256"] == json.loads((camp_dir / "data_r0.json").read_text())["sha256"]
    assert (v1["strategy"] == "uncertainty" and v1["method"] == "gfn2-xtb"
            and v1["chosen_by"] == camp["rounds"][0]["sweep"])
    sel = ase.io.read(camp_dir / "selected_r0.extxyz", ":")
    with np.load(camp_dir / "data_r1.npz") as d1:  # the selected geometries, labelled by GFN2-xTB
        from schnet_model.data.generate import label_gfn2

        np.testing.assert_allclose(d1["R"][24:], [a.positions for a in sel], atol=1e-6)
        e, f = label_gfn2(d1["z"], d1["R"][25])
        assert np.isclose(d1["E"][25], e) and np.allclose(d1["F"][25], f)

    from orchestrator.tracking.store import open_client

    client = open_client("sqlite:///mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`sweep.role` = 'round'")
    rounds = [x for x in runs if x.data.tags["sweep.campaign"] == camp["run_id"]]
    assert sorted(x.data.tags["sweep.round"] for x in rounds) == ["0", "1"]
    assert all(x.data.tags["mlflow.parentRunId"] == camp["run_id"] for x in rounds)
    r0 = next(x for x in rounds if x.data.tags["sweep.round"] == "0")
    assert {a.path for a in client.list_artifacts(r0.info.run_id)} >= {"selected_r0.extxyz", "data_r0.npz",
                                                                       "data_r0.json"}
    assert client.get_run(camp["run_id"]).info.status == "FINISHED"

    # `sweep select` with a round's sweep as the source logs its choice under that sweep run
    ase.io.write("cands.xyz", ethanol_frames(12, 500), format="extxyz")
    r = cli("select", camp["rounds"][1]["sweep"], "--candidates", "cands.xyz", "-n", "4", "-o", "sel.extxyz",
            # explicit: MLflow leaves $MLFLOW_TRACKING_URI set by earlier tests
            "--tracking-uri", "sqlite:///mlflow.db")
    assert r.exit_code == 0 and "logged as run" in r.output, r.output
    sweep_run = client.search_runs([r0.info.experiment_id], f"tags.`sweep.id` = '{camp['rounds'][1]['sweep']}' "
                                   "and tags.`sweep.role` = 'sweep'")[0]
    (sel_run,) = client.search_runs([r0.info.experiment_id], "tags.`sweep.role` = 'selection'")
    assert (sel_run.data.tags["mlflow.parentRunId"] == sweep_run.info.run_id
            and sel_run.data.params["strategy"] == "uncertainty")
    assert sel_run.data.metrics["selected"] == 4 and [
        a.path for a in client.list_artifacts(sel_run.info.run_id)] == ["sel.extxyz"]
    assert sweep_run.data.tags["sweep.campaign"] == camp["run_id"] and sweep_run.data.tags["sweep.round"] == "1"

    # a crash after round 0: the state says round 1 never finished; --resume runs round 1 only
    camp["rounds"], camp["status"] = camp["rounds"][:1], "running"
    (camp_dir / "campaign.json").write_text(json.dumps(camp))
    r = sweep(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming campaign {camp_dir.name} at round 1" in r.stdout and "\nround 0:" not in r.stdout
    assert [x["round"] for x in json.loads((camp_dir / "campaign.json").read_text())["rounds"]] == [0, 1]
    r = sweep(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 2 and "no unfinished campaign al-learn-*" in r.stderr


def test_sweep_learn_needs_a_fixed_test_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_sweep_spec(tmp_path / "al.yaml", {"dataset": {"n_train": 16, "n_val": 8}})
    r = cli("learn", str(spec))
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "sweep learn needs a fixed test set" in r.stderr and "dataset.test_path" in r.stderr
    assert not Path("campaigns").exists() and not Path("mlflow.db").exists()
    r = cli("learn", str(spec), "--set", "dataset.test_path=x.npz", "--strategy", "best")
    assert r.exit_code == 2 and "--strategy: 'best'" in r.stderr
    r = cli("learn", str(spec), "--set", "dataset.test_path=x.npz", "--threshold", "4y")
    assert r.exit_code == 2 and "--threshold: '4y'; expected eV/Å (e.g. 1.0) or a multiple" in r.stderr
    r = cli("learn", str(spec), "--set", "dataset.test_path=x.npz", "--pool-factor", "0")
    assert r.exit_code == 2 and "--pool-factor" in r.stderr
    with pytest.raises(LearnError, match=r"--pool-factor: must be ≥ 1 \(got 0\)"):
        LearnOptions(pool_factor=0)
    assert not Path("campaigns").exists()
