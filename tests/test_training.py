"""Trainer: overfitting, early stopping, NaN detection, reproducibility, resume, loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import QUICKSTART_DATA, random_molecules, small_model

from schnet_model import ModelConfig, NonFiniteLossError, SchNet, Trainer, TrainingConfig, read_dataset
from schnet_model.training import energy_force_loss

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
    r = Trainer(SchNet(SMALL), data, data, TrainingConfig(max_epochs=10_000, max_time=0.5, early_stopping_patience=None)).fit()
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
