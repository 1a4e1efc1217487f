"""Trainer: overfitting, early stopping, NaN detection, reproducibility, resume, loss, refit of the energy
references."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import QUICKSTART_DATA, SHARED, TINY_MODEL, random_molecules, small_model

from schnet_model import ModelConfig, NonFiniteLossError, SchNet, Trainer, TrainingConfig, read_dataset
from schnet_model.nn.offsets import element_counts, reference_energy
from schnet_model.training import energy_force_loss, evaluate, predict
from schnet_model.training.refit import ATOMREF
from schnet_model.training.trainer import fit_offsets_fn

SMALL = ModelConfig(n_atom_basis=32, n_filters=32, n_interactions=2, rbf_max=8.0)


def _ethanol(n: int, start: int = 0):
    return read_dataset(QUICKSTART_DATA).subset(np.arange(start, start + n))


def test_loss_matches_paper_formula():
    d = random_molecules(3, sizes=(2, 4, 3))
    model = small_model()
    b = d.batch(np.arange(3), None, torch.float64)
    pred = model(b)
    loss = float(energy_force_loss(pred, b, rho=0.01, use_forces=True))
    manual = 0.0
    for m in range(3):
        a, z = d.atom_ptr[m], d.atom_ptr[m + 1]
        de = float(pred.energy[m]) - d.E[m]
        df = pred.forces[a:z].detach().numpy() - d.F[a:z]
        manual += 0.01 * de**2 + (df**2).sum() / (z - a)
    assert loss == pytest.approx(manual / 3, rel=1e-10)
    e_only = float(energy_force_loss(pred, b, rho=0.01, use_forces=False))
    assert e_only == pytest.approx(float(((pred.energy - b.E) ** 2).mean()), rel=1e-12)


def test_overfitting_ten_molecules_drives_loss_near_zero():
    data = _ethanol(10)
    torch.manual_seed(0)
    cfg = TrainingConfig(lr=1e-2, batch_size=5, max_epochs=300, early_stopping_patience=None, scheduler="exponential",
                         lr_decay=0.05, lr_decay_steps=600)
    trainer = Trainer(SchNet(SMALL), data, data, cfg)
    first = trainer.run_epoch().val.loss
    result = trainer.fit()
    assert result.best_val_loss < 0.01 * first  # two orders of magnitude
    assert result.history[-1].val.forces_mae < 1.5  # kcal/mol/Å, from ~20 at the start


def test_early_stopping_really_stops():
    train, val = _ethanol(20), _ethanol(20, start=500)
    torch.manual_seed(0)
    # a learning rate so small nothing improves measurably after the first epochs
    cfg = TrainingConfig(lr=1e-9, max_epochs=200, early_stopping_patience=3, early_stopping_min_delta=1.0)
    trainer = Trainer(SchNet(SMALL), train, val, cfg)
    result = trainer.fit()
    assert result.stop_reason.startswith("early stopping")
    assert len(result.history) == 4  # epoch 1 improves on inf, then 3 without improvement


def test_epoch_and_time_budgets():
    data = _ethanol(16)
    r = Trainer(SchNet(SMALL), data, data, TrainingConfig(max_epochs=2, early_stopping_patience=None)).fit()
    assert len(r.history) == 2 and "max_epochs" in r.stop_reason
    r = Trainer(SchNet(SMALL), data, data,
                TrainingConfig(max_epochs=10_000, max_time=0.5, early_stopping_patience=None)).fit()
    assert "time budget" in r.stop_reason and len(r.history) < 10_000


def test_nan_loss_raises_with_epoch_and_step():
    data = _ethanol(64)
    model = SchNet(SMALL)
    trainer = Trainer(model, data, data, TrainingConfig(batch_size=16))
    trainer.run_epoch()
    with torch.no_grad():
        model.interactions[0].filter_net[1].weight.fill_(math.inf)
    with pytest.raises(NonFiniteLossError, match=r"at epoch 2, step 4") as e:
        trainer.run_epoch()
    assert e.value.epoch == 2 and e.value.step == 4


def test_gradient_clipping_and_plateau_scheduler_run():
    data = _ethanol(32)
    cfg = TrainingConfig(scheduler="plateau", plateau_patience=1, plateau_factor=0.5, grad_clip=0.1, max_epochs=4,
                         lr=1e-2, early_stopping_patience=None)
    r = Trainer(SchNet(SMALL), data, data, cfg).fit()
    assert len(r.history) == 4 and all(math.isfinite(h.val.loss) for h in r.history)


def _train(seed: int, epochs: int):
    torch.manual_seed(seed)
    data = _ethanol(48)
    t = Trainer(SchNet(SMALL), data, data, TrainingConfig(seed=seed, batch_size=16, max_epochs=epochs))
    for _ in range(epochs):
        t.run_epoch()
    return t


def test_seeded_training_is_reproducible_on_cpu():
    a, b = _train(1, 2), _train(1, 2)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resume_from_state_dict_continues_exactly():
    straight = _train(2, 3)
    partial = _train(2, 2)
    state = partial.state_dict()
    torch.manual_seed(99)
    data = _ethanol(48)
    resumed = Trainer(SchNet(SMALL), data, data, TrainingConfig(seed=2, batch_size=16, max_epochs=3), fit_offsets=False)
    resumed.load_state_dict(state)
    resumed.run_epoch()
    assert resumed.epoch == 3 and resumed.step == straight.step
    for va, vb in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=0, rtol=0)


def test_energy_only_training_when_no_forces():
    data = random_molecules(24, sizes=(4, 6), forces=False)
    t = Trainer(SchNet(SMALL), data, data, TrainingConfig(max_epochs=2))
    assert not t.use_forces
    r = t.fit()
    assert r.history[-1].val.forces_mae is None
    with pytest.raises(ValueError, match="use_forces is true but the dataset has no forces"):
        Trainer(SchNet(SMALL), data, data, TrainingConfig(use_forces=True))


def test_a_metric_is_never_nan_silently():
    from schnet_model.training.errors import NonFinitePrediction
    from schnet_model.training.metrics import Predictions, metrics_of

    data = random_molecules(4, sizes=(3, 9))
    forces = np.zeros_like(data.F)
    forces[5, 1] = np.nan  # atom 5 belongs to molecule 1 (3 + 9 atoms)
    with pytest.raises(NonFinitePrediction, match=r"random: the model predicts NaN/inf for molecule 1 \(1 of 4\)"):
        metrics_of(Predictions(np.zeros(4), forces), data, 0.01, True)
    with pytest.raises(NonFinitePrediction, match="molecule 2"):
        metrics_of(Predictions(np.array([0.0, 0.0, np.inf, 0.0]), None), data, 0.01, False)


# -- refit of the energy references ---------------------------------------------------------------
TINY = ModelConfig(**TINY_MODEL)


def _relabelled(data, model: SchNet, shift: float = 0.0, per_element: dict[int, float] | None = None):
    """``data`` with energies replaced by ``model``'s plus ``shift`` per molecule and ``per_element`` per atom."""
    ref = np.zeros(100)
    for z, v in (per_element or {}).items():
        ref[z] = v
    e = predict(model, data, forces=False).energy + shift + reference_energy(data.Z, data.atom_ptr, ref)
    return dataclasses.replace(data, E=e)


def _tiny(data) -> SchNet:
    """A tiny float64 SchNet with references fitted on ``data`` (energies of the data's magnitude)."""
    torch.manual_seed(0)
    model = SchNet(TINY).double()
    model.offsets.set(*fit_offsets_fn(data, TINY.max_z))
    return model


def test_refit_recovers_a_constant_energy_shift_and_leaves_forces_alone():
    data = _ethanol(40)
    model = _tiny(data)
    data = _relabelled(data, model, shift=0.37)  # kcal/mol per molecule; ethanol: one composition, C2H6O
    train, val = data.subset(np.arange(30)), data.subset(np.arange(30, 40))
    t = Trainer(model, train, val, TrainingConfig(), fit_offsets=False)
    before = predict(t.model, val)
    ref_before = t.model.offsets.atomref.clone()
    r = t.refit_offsets()
    assert r.kept and r.energy_unit == "kcal/mol" and r.elements == (1, 6, 8)
    assert (r.train_mean_residual == pytest.approx(0.37, abs=1e-10)
            and r.val_mean_residual == pytest.approx(0.37, abs=1e-10))
    assert r.val_energy_mae_before == pytest.approx(0.37, abs=1e-10) and r.val_energy_mae_after < 1e-10
    delta = (t.model.offsets.atomref - ref_before).numpy()
    # minimum norm, Σ counts·δ = 0.37
    assert delta[[1, 6, 8]] == pytest.approx(0.37 * np.array([6, 2, 1]) / 41, abs=1e-13)
    after = predict(t.model, val)
    assert np.abs(after.energy - val.E).max() < 1e-10  # the model itself, predicted again
    assert np.array_equal(after.forces, before.forces)  # bit for bit
    assert torch.equal(t.best_state[ATOMREF], t.model.offsets.atomref)


def test_a_refit_that_worsens_validation_is_not_kept():
    data = _ethanol(40)
    model = _tiny(data)
    train = _relabelled(data.subset(np.arange(30)), model, shift=0.37)
    val = _relabelled(data.subset(np.arange(30, 40)), model)  # exact already
    t = Trainer(model, train, val, TrainingConfig(), fit_offsets=False)
    state = copy.deepcopy(t.state_dict())
    r = t.refit_offsets()
    assert not r.kept and r.val_energy_mae_before < 1e-10 and r.val_energy_mae_after == pytest.approx(0.37, abs=1e-10)
    for key, v in t.model.state_dict().items():
        assert torch.equal(v, state["model"][key]) and torch.equal(t.best_state[key], state["best_state"][key]), key


@pytest.mark.parametrize("source", ["random H/C/N/O", "QM9 rows (shared)"])
def test_refit_recovers_per_element_shifts_of_varying_compositions(source):
    if source.startswith("QM9"):
        path = SHARED / "schnetpack" / "test_qm9.db"
        if not path.exists():
            pytest.skip("../shared absent")
        data = read_dataset(path)  # 20 molecules, Ha, no forces
    else:
        data = random_molecules(45, sizes=(3, 9, 5))
    model = _tiny(data)
    shifts = {z: 0.1 * (i + 1) * (-1) ** i for i, z in enumerate(data.elements)}  # per atom
    data = _relabelled(data, model, per_element=shifts)
    n = 2 * len(data) // 3
    train, val = data.subset(np.arange(n)), data.subset(np.arange(n, len(data)))
    assert np.linalg.matrix_rank(element_counts(train.Z, train.atom_ptr)[0]) == len(train.elements)
    t = Trainer(model, train, val, TrainingConfig(), fit_offsets=False)
    r = t.refit_offsets()
    assert r.kept and r.val_energy_mae_after < 1e-10 < r.val_energy_mae_before
    assert dict(zip(r.elements, r.correction, strict=True)) == pytest.approx(shifts, abs=1e-10)


def test_fit_ends_with_the_refit_and_a_resumed_trainer_keeps_it():
    data = _ethanol(48)
    train, val = data.subset(np.arange(32)), data.subset(np.arange(32, 48))
    cfg = TrainingConfig(seed=0, batch_size=16, max_epochs=3, rho=0.01, early_stopping_patience=None)
    torch.manual_seed(0)
    t = Trainer(SchNet(TINY), train, val, cfg)
    refs = t.model.offsets.atomref.clone()
    result = t.fit()
    r = result.offset_refit
    assert r is not None and r.kept  # three epochs on forces: the energies' constant has drifted
    assert abs(r.train_mean_residual) > 0.1  # kcal/mol
    assert evaluate(t.model, val).energy_mae == pytest.approx(r.val_energy_mae_after, rel=1e-6)
    assert not torch.equal(t.model.offsets.atomref, refs)
    state = t.state_dict()
    assert torch.equal(state["best_state"][ATOMREF], state["model"][ATOMREF])
    torch.manual_seed(5)
    resumed = Trainer(SchNet(TINY), train, val, cfg)  # its own references, replaced by the state's
    resumed.load_state_dict(state)
    assert torch.equal(resumed.model.offsets.atomref, t.model.offsets.atomref)
    assert resumed.fit(refit=False).offset_refit is None  # max_epochs reached: loads best_state, which has the refit
    assert torch.equal(resumed.model.offsets.atomref, t.model.offsets.atomref)


def test_cosine_decay_runs_from_lr_to_min_lr_over_max_epochs():
    from schnet_model.training.optim import make_schedulers

    cfg = TrainingConfig(lr=1e-3, min_lr=1e-5, scheduler="cosine", max_epochs=10)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    step, plateau = make_schedulers(opt, cfg, steps_per_epoch=4)  # T = 40 optimiser steps
    assert plateau is None
    lrs = []
    for _ in range(45):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        step.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[20] == pytest.approx((1e-3 + 1e-5) / 2)
    assert lrs[40] == pytest.approx(1e-5) and lrs[44] == pytest.approx(1e-5)  # floored after T
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_a_time_budget_sets_the_cosine_horizon_and_a_checkpoint_keeps_it():
    """set_horizon: the decay ends after the steps taken plus the epochs left (capped by max_epochs), at once."""
    from schnet_model.training.optim import make_schedulers, set_horizon

    cfg = TrainingConfig(lr=1e-3, min_lr=1e-5, scheduler="cosine", max_epochs=1000)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    step, _ = make_schedulers(opt, cfg, steps_per_epoch=4)
    for _ in range(8):  # 2 epochs
        opt.step()
        step.step()
    assert opt.param_groups[0]["lr"] > 0.999e-3  # over 4,000 steps: barely begun
    assert set_horizon(step, cfg, 4, epochs_left=2)  # 8 taken + 8 left: half-way now
    assert opt.param_groups[0]["lr"] == pytest.approx((1e-3 + 1e-5) / 2)
    saved = copy.deepcopy(step.state_dict())
    for _ in range(8):
        opt.step()
        step.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)  # min_lr where the budget ends
    opt2 = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    again, _ = make_schedulers(opt2, cfg, steps_per_epoch=4)
    again.load_state_dict(saved)  # the horizon travels with the checkpoint
    assert again.lr_lambdas[0].total == 16
    set_horizon(step, cfg, 4, epochs_left=10_000)  # never beyond max_epochs
    assert step.lr_lambdas[0].total == 4000
    other = TrainingConfig(scheduler="exponential", cooldown=0)
    opt3 = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    assert not set_horizon(make_schedulers(opt3, other, 4)[0], other, 4, epochs_left=1)  # untouched


def test_under_a_time_budget_the_paper_exponential_cools_down_to_min_lr_over_the_runs_last_fifth():
    """Without a budget the paper's schedule, exactly; with one, equal to it until the last ``cooldown`` (0.2) of the
    run, then a half cosine to min_lr where the budget ends; the horizon travels with a checkpoint."""
    from schnet_model.training.optim import make_schedulers, set_horizon

    cfg = TrainingConfig(lr=1e-3, min_lr=1e-6, scheduler="exponential", lr_decay=0.5, lr_decay_steps=100)

    def run(horizon_epochs: float | None, steps: int = 100) -> tuple[list[float], torch.optim.lr_scheduler.LambdaLR]:
        opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        sched, _ = make_schedulers(opt, cfg, steps_per_epoch=10)
        if horizon_epochs is not None:
            assert set_horizon(sched, cfg, 10, epochs_left=horizon_epochs)
        lrs = []
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return lrs, sched

    paper, _ = run(None)
    assert paper == pytest.approx([1e-3 * 0.5 ** (s / 100) for s in range(100)])
    budget, sched = run(10)  # 100 steps in all: the last 20 cool down
    assert budget[:81] == pytest.approx(paper[:81])
    assert budget[90] == pytest.approx(1e-6 + (paper[90] - 1e-6) * 0.5)  # half-way through the cooldown
    assert budget[99] < 0.01 * paper[99] and all(a >= b for a, b in zip(budget, budget[1:], strict=False))
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    again, _ = make_schedulers(opt, cfg, steps_per_epoch=10)
    again.load_state_dict(copy.deepcopy(sched.state_dict()))
    assert again.lr_lambdas[0].total == 100


def test_under_a_time_budget_a_plateau_schedule_anneals_over_the_runs_last_fifth_and_still_halves_on_plateaus():
    """ReduceLROnPlateau's rule on its own rate; with a horizon (set_horizon, in epochs), the rate used falls by a half
    cosine to min_lr over the last ``cooldown`` (0.2) of the run; the rule's rate and the horizon travel with a
    checkpoint; an old checkpoint (no horizon) loads as plain ReduceLROnPlateau."""
    from schnet_model.training.optim import Plateau, make_schedulers, set_horizon

    cfg = TrainingConfig(lr=1e-3, min_lr=1e-6, scheduler="plateau", plateau_patience=2, plateau_factor=0.5)

    def run(horizon: int | None, losses: list[float]) -> tuple[list[float], Plateau]:
        opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        _, plateau = make_schedulers(opt, cfg)
        if horizon is not None:
            assert set_horizon(plateau, cfg, 1, epochs_left=horizon)
        lrs = []
        for loss in losses:
            lrs.append(opt.param_groups[0]["lr"])
            plateau.step(loss)
        return lrs, plateau

    losses = [1.0 / (e + 1) for e in range(50)]  # improving every epoch: the rule never halves
    plain, _ = run(None, losses)
    assert plain == pytest.approx([1e-3] * 50)
    budget, sched = run(50, losses)  # 50 epochs in all: the last 10 anneal
    assert budget[:41] == pytest.approx(plain[:41])
    assert budget[45] == pytest.approx(1e-6 + (plain[45] - 1e-6) * 0.5)  # half-way through the anneal
    assert budget[49] < 0.03 * plain[49] and all(a >= b for a, b in zip(budget, budget[1:], strict=False))
    # the rule halves its own rate inside the anneal, not the annealed one
    late = [1.0 / (e + 1) for e in range(42)] + [1.0] * 8
    rule, s2 = run(50, late)
    assert s2.level == [pytest.approx(2.5e-4)]  # halved after 3 and 6 bad epochs, not compounded with the anneal
    assert rule[46] == pytest.approx(1e-6 + (5e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.6)))
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    _, again = make_schedulers(opt, cfg)
    again.load_state_dict(copy.deepcopy(sched.state_dict()))
    assert again.horizon == 50 and again.level == sched.level
    old = {k: v for k, v in sched.state_dict().items() if k not in ("anneal", "floor_lr", "horizon", "level")}
    opt4 = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2e-4)
    _, legacy = make_schedulers(opt4, cfg)
    legacy.load_state_dict(old)
    legacy.step(0.0)
    assert opt4.param_groups[0]["lr"] == pytest.approx(2e-4) and legacy.level is None
    off = TrainingConfig(scheduler="plateau", cooldown=0)
    opt3 = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    assert not set_horizon(make_schedulers(opt3, off)[1], off, 1, epochs_left=1)  # untouched


def test_fit_with_max_time_decays_a_cosine_to_min_lr_by_the_budgets_end():
    data = _ethanol(16)
    cfg = TrainingConfig(lr=1e-3, min_lr=1e-6, scheduler="cosine", max_epochs=100_000, max_time=3.0,
                         early_stopping_patience=None, batch_size=8, compile_after=None)
    r = Trainer(SchNet(SMALL), data, data, cfg).fit()
    lrs = [h.lr for h in r.history]
    assert "time budget" in r.stop_reason and len(lrs) >= 6
    assert lrs[-1] < 0.25 * cfg.lr  # over max_epochs it would still be ≈ lr
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
