"""PaiNN as ``model.family``: the spec, the module, stacked fold training, model directories, the ensemble, the
export and a family search run end to end through the same code as SchNet (issue 27)."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_molecules, sweep_cli, write_sweep_spec
from test_stacked import members, rel

from orchestrator.search.cost import EpochCost, describe
from orchestrator.search.plan import costliest
from orchestrator.spec.load import SpecError, TrainSpec, validate
from orchestrator.spec.sweep import load_sweep_spec
from schnet_model import ModelConfig, PaiNN, PaiNNConfig, Trainer, TrainingConfig, load_model, save_model
from schnet_model.data.graph import Graph
from schnet_model.data.molecules import iterate_batches
from schnet_model.ensemble import Ensemble, SchNetEnsemble
from schnet_model.model_dir import ModelInfo
from schnet_model.nn.family import build_model, stack_states
from schnet_model.nn.painn import painn_energies_forces, painn_layout
from schnet_model.training.stacked import StackedTrainer

SMALL = {"n_atom_basis": 8, "n_interactions": 2, "n_rbf": 6, "cutoff": 4.0}
sweep = partial(sweep_cli, timeout=400)


def _spec(tmp_path: Path, model: dict) -> Path:
    return write_sweep_spec(tmp_path / "s.yaml", {"name": "t", "model": model})


@pytest.mark.parametrize(("model", "error"), [
    ({"n_rbf": 20}, "model.n_rbf: a painn key; model.family is schnet"),
    ({"family": "painn", "n_filters": 64}, "model.n_filters: a schnet key; model.family is painn"),
    ({"family": "gemnet"}, "model.family: expected schnet or painn (got 'gemnet')"),
    ({"family": "painn", "cutoff": None}, "model.cutoff: Input should be a valid number"),
    ({"family": {"choice": ["schnet", "painn"]}, "n_filters": {"choice": [32, 64]}, "gamma": -1},
     "model.gamma: Input should be greater than 0"),
])
def test_a_key_of_the_other_family_or_a_bad_value_is_a_one_line_error_naming_it(tmp_path, model, error):
    with pytest.raises(SpecError) as e:
        load_sweep_spec(_spec(tmp_path, model))
    assert error in str(e.value) and "\n" not in str(e.value)
    if "family" not in model or isinstance(model["family"], str):  # `sweep train` specs say the same
        with pytest.raises(SpecError) as e:
            validate(TrainSpec, {"dataset": {"path": "x.npz"}, "model": model}, "t.yaml")
        assert error in str(e.value)


@pytest.mark.parametrize(("point", "error"), [
    ({"model.family": "painn", "model.n_filters": 64},
     "search.initial_points[0].model.n_filters: a schnet key; model.family is painn"),
    ({"model.family": "schnet", "model.n_rbf": 20},
     "search.initial_points[0].model.n_rbf: a painn key; model.family is schnet"),
    ({"training.lrr": 1.0e-3}, "search.initial_points[0].training.lrr: unknown key"),
    ({"modle.n_rbf": 20}, "search.initial_points[0].modle.n_rbf: unknown key"),
])
def test_a_start_point_with_a_key_of_the_other_family_or_an_unknown_key_is_a_one_line_error(tmp_path, point, error):
    """A start point's misspelt or other-family key was dropped silently: the trial ran something else."""
    path = write_sweep_spec(tmp_path / "s.yaml", {
        "name": "t", "model": {"family": {"choice": ["schnet", "painn"]}, "n_filters": {"choice": [32, 64]},
                               "n_rbf": {"int": [10, 30]}},
        "search": {"initial_points": [point]}})
    with pytest.raises(SpecError) as e:
        load_sweep_spec(path)
    assert error in str(e.value) and "\n" not in str(e.value)


def test_a_family_search_conditions_each_familys_keys_on_it_and_starts_from_the_schnet_paper_point(tmp_path):
    spec = load_sweep_spec(_spec(tmp_path, {
        "family": {"choice": ["schnet", "painn"]}, "n_atom_basis": {"choice": [64, 128]},
        "n_filters": {"choice": [64, 128]}, "n_rbf": {"int": [10, 30]}, "cutoff": 5.0}))
    space = spec.space()
    assert list(space)[0] == "model.family" and spec.families() == ["schnet", "painn"]
    assert space["model.n_filters"].when == {"model.family": "schnet"}
    assert space["model.n_rbf"].when == {"model.family": "painn"}
    assert space["model.n_atom_basis"].when is None  # both families have it
    assert spec.initial_points() == [{"model.family": "schnet", "model.n_atom_basis": 64, "model.n_filters": 64}]
    model, _ = spec.materialize({"model.family": "painn", "model.n_atom_basis": 64, "model.n_rbf": 12})
    assert isinstance(model, PaiNNConfig) and (model.n_atom_basis, model.n_rbf, model.cutoff) == (64, 12, 5.0)
    model, _ = spec.materialize(spec.initial_points()[0])
    assert isinstance(model, ModelConfig) and model.cutoff == 5.0 and model.n_filters == 64
    # the budget plan prices each family by its own cost; the costliest configuration of the space is named
    cost = EpochCost(800, 200, 9.0, {"none": 72.0, "5": 60.0})
    painn = cost.seconds(PaiNNConfig(), TrainingConfig())
    assert painn > cost.seconds(ModelConfig(), TrainingConfig())
    what, seconds = costliest(space, spec.materialize, cost)
    assert what.startswith("PaiNN 3×128") and seconds == pytest.approx(painn)
    assert describe(PaiNNConfig(), TrainingConfig()) == "PaiNN 3×128, batch 32"


def test_a_default_the_space_leaves_out_is_not_a_first_point(tmp_path):
    """The paper's lr 1e-3 is not among lr: {choice: [5e-4]}: Optuna samples it (Tune refused the point before)."""
    spec = load_sweep_spec(write_sweep_spec(tmp_path / "s.yaml", {
        "name": "t", "model": {"family": "painn", "n_rbf": {"int": [10, 30]}},
        "training": {"lr": {"choice": [5.0e-4]}, "batch_size": {"choice": [10, 32]}}}))
    assert spec.initial_points() == [{"model.n_rbf": 20, "training.batch_size": 32}]


def test_the_painn_module_is_the_functional_forward_with_one_member():
    torch.manual_seed(0)
    cfg = PaiNNConfig(**SMALL)
    model = PaiNN(cfg).double()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == painn_layout(cfg)
    data = random_molecules(6, sizes=(5, 7), seed=2)
    batch = next(iter(iterate_batches(data, 6, cfg.cutoff, shuffle=False, dtype=torch.float64)))
    pred = model(batch)
    (p,) = [stack_states([model.state_dict()], cfg)]
    pi, pj = batch.idx_i, batch.idx_j
    keep = pi < pj  # the same pairs once each: the functional forward takes both directions
    E, F = painn_energies_forces(p, cfg, Graph(batch.Z[None], batch.R[None], batch.mol[None], batch.n_mols,
                                               pi[keep][None], pj[keep][None]))
    assert torch.allclose(pred.energy, E[0], atol=1e-10) and torch.allclose(pred.forces, F[0], atol=1e-10)


def test_stacked_painn_members_end_with_the_weights_of_members_trained_alone():
    cfg = PaiNNConfig(**SMALL)
    ms = members((5, 9), **{"scheduler": "plateau", "plateau_patience": 1, "grad_clip": 0.5})
    st = StackedTrainer(cfg, ms, dtype=torch.float64)
    assert "PaiNN, forces explicit" in st.mode
    stacked = [st.run_epoch() for _ in range(3)]
    for m, member in enumerate(ms):
        torch.manual_seed(member.config.seed)
        t = Trainer(build_model(cfg).double(), member.train, member.val, member.config)
        results = [t.run_epoch() for _ in range(3)]
        mine = st.member_model(m, best=False)
        assert rel(torch.cat([q.detach().reshape(-1) for q in mine.parameters()]),
                   torch.cat([q.detach().reshape(-1) for q in t.model.parameters()])) < 1e-10
        for r_alone, r_stack in zip(results, [s[m] for s in stacked], strict=True):
            assert r_stack.val.loss == pytest.approx(r_alone.val.loss, rel=1e-10)
        state = st.member_state_dict(m)  # checkpoints are the Trainer's, both ways
        st.load_member_state_dict(m, state)
        after = st.member_model(m, best=False)
        assert all(torch.equal(a, b) for a, b in zip(after.parameters(), mine.parameters(), strict=True))


def _painn_members(k: int = 2) -> tuple[list[PaiNN], object]:
    data = random_molecules(30, sizes=(5, 9), seed=3)
    cfg = PaiNNConfig(**SMALL)
    ms = members((5, 9), n_members=k)
    st = StackedTrainer(cfg, ms)
    st.run_epoch()
    return [st.member_model(m) for m in range(k)], data


def test_painn_model_directory_ensemble_and_export_round_trip(tmp_path):
    models, data = _painn_members()
    info = ModelInfo(data.energy_unit, sorted({int(z) for z in data.Z}))
    save_model(models[0], info, tmp_path / "m0")
    back, _ = load_model(tmp_path / "m0")
    assert isinstance(back, PaiNN) and json.loads((tmp_path / "m0" / "config.json").read_text())["model"]["family"] \
        == "painn"
    batch = next(iter(iterate_batches(data.subset(np.arange(6)), 6, 4.0, shuffle=False)))
    assert torch.equal(back(batch).energy, models[0](batch).energy)

    ens = Ensemble.from_models(models, [info, info])
    assert SchNetEnsemble is Ensemble
    pred = ens.predict(data, members=True)
    for m, model in enumerate(models):  # the stacked ensemble pass = each member alone
        alone = [model(b) for b in iterate_batches(data, 10, 4.0, shuffle=False)]
        assert np.allclose(pred.members_energy[m], np.concatenate([a.energy.detach().numpy() for a in alone]),
                           atol=1e-4)
        assert np.allclose(pred.members_forces[m], np.concatenate([a.forces.detach().numpy() for a in alone]),
                           atol=1e-4)
    ens.save(tmp_path / "ens")
    assert type(Ensemble.load(tmp_path / "ens").member_models()[0]) is PaiNN

    from schnet_model.export import export_ensemble

    ens64 = Ensemble.load(tmp_path / "ens").to(dtype=torch.float64)
    export_ensemble(ens64, tmp_path / "exp")
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert manifest["model"]["family"] == "painn"
    sys.path.insert(0, str(tmp_path / "exp"))
    try:
        from load_ensemble import load
    finally:
        sys.path.pop(0)
    program = load(tmp_path / "exp")
    for i in (3, 0):  # molecules of different sizes: the atom count is dynamic
        one = data.subset(np.arange(i, i + 1))
        out = program(torch.from_numpy(one.Z), torch.from_numpy(one.R).double())
        ref = ens64.predict(one, calibrated=True)
        assert float(out["energy"]) == pytest.approx(float(ref.energy[0]), abs=1e-8)
        assert np.allclose(out["forces"].numpy(), ref.forces, atol=1e-8)
        assert np.allclose(out["forces_std_atom"].numpy(), ref.forces_std_norm, atol=1e-8)


@pytest.mark.integration
def test_a_family_search_trains_both_families_and_the_ensemble_of_the_best_names_its_family(tmp_path):
    spec = write_sweep_spec(tmp_path / "fam.yaml", {
        "name": "fam", "dataset": {"n_train": 60, "n_val": 20, "n_test": 30},
        "model": {"family": {"choice": ["schnet", "painn"]}, "n_atom_basis": 16, "n_interactions": 2,
                  "n_filters": 16, "rbf_max": 6.0, "n_rbf": {"choice": [8, 12]}, "cutoff": 5.0},
        "training": {"max_epochs": 2, "batch_size": 20, "lr": 1.0e-3},
        "search": {"num_samples": 2, "max_concurrent": 1, "scheduler": "none", "plan": "off",
                   "initial_points": [{"model.family": "schnet"}, {"model.family": "painn", "model.n_rbf": 8}]},
        "resources": {"layout": "stacked"}})
    run = sweep("run", str(spec), "--name", "fam", cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = " ".join(run.stdout.split())
    assert "PaiNN, forces explicit" in out and "windowed filters, forces explicit" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("fam").experiment_id)
    trials = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    assert {r.data.params["model.family"] for r in trials} == {"schnet", "painn"}
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"  # named: an MLFLOW_TRACKING_URI another test set must not apply
    ens = sweep("ensemble", "fam", "--save", str(tmp_path / "ens"), "--tracking-uri", db, cwd=tmp_path)
    assert ens.returncode == 0, ens.stdout[-3000:] + ens.stderr[-3000:]
    best = min(trials, key=lambda r: r.data.metrics.get("val_loss_mean", np.inf))
    manifest = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert manifest["model"]["family"] == best.data.params["model.family"]
