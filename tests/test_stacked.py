"""Stacked fold training: k members trained as one stacked model equal k models trained alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import random_molecules

from schnet_model import ModelConfig, SchNet, Trainer, TrainingConfig
from schnet_model.data.stack import StackCollator, stacked_loss
from schnet_model.nn.core import energies_forces
from schnet_model.training.loss import energy_force_loss
from schnet_model.training.refit import ATOMREF
from schnet_model.training.stacked import Member, MemberNonFinite, StackedTrainer

CFG = dict(n_atom_basis=16, n_filters=16, n_interactions=2, rbf_max=10.0)
TOL = 1e-12  # float64: the same arithmetic up to summation order; trajectories stay within ~1e-16


def members(sizes, n_members=3, n=60, seed=1, **train) -> list[Member]:
    """Members with different training sets (sizes 28, 31, 34: different numbers of batches)."""
    data = random_molecules(n, sizes=sizes, seed=seed)
    rng = np.random.default_rng(0)
    out = []
    for m in range(n_members):
        idx = rng.permutation(n)
        cfg = TrainingConfig(**{"batch_size": 8, "max_epochs": 10, **train, "seed": m})
        out.append(Member(data.subset(idx[: 28 + 3 * m]), data.subset(idx[40 : 52 + m]), cfg))
    return out


def alone(model_cfg: ModelConfig, member: Member, epochs: int) -> tuple[Trainer, list]:
    """A member trained alone by the Trainer, as a fold actor does."""
    torch.manual_seed(member.config.seed)
    t = Trainer(SchNet(model_cfg).double(), member.train, member.val, member.config)
    results = []
    for _ in range(epochs):
        if t.should_stop_early():
            break
        results.append(t.run_epoch())
    return t, results


def flat(model: SchNet) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CASES = [
    ("ethanol-sized, exponential", (9,), {}, {}),
    ("mixed sizes, plateau, clipping", (3, 9, 5, 12),
     {"scheduler": "plateau", "plateau_patience": 1, "grad_clip": 0.5}, {}),
    ("ISO17/aspirin sizes, cutoff", (19, 21), {}, {"cutoff": 4.0}),
    ("cosine decay over max_epochs", (9, 5), {"scheduler": "cosine", "max_epochs": 3, "min_lr": 1e-5}, {}),
]


@pytest.mark.parametrize("filters", ["windowed", "dense"])
@pytest.mark.parametrize(("name", "sizes", "train", "model"), CASES, ids=[c[0] for c in CASES])
def test_stacked_members_end_with_the_weights_of_members_trained_alone(name, sizes, train, model, filters):
    model_cfg = ModelConfig(**CFG, **model)
    ms = members(sizes, **train)
    st = StackedTrainer(model_cfg, ms, dtype=torch.float64, filters=filters)
    stacked = [st.run_epoch() for _ in range(3)]
    for m, member in enumerate(ms):
        t, results = alone(model_cfg, member, 3)
        assert rel(flat(st.member_model(m, best=False)), flat(t.model)) < TOL
        assert rel(flat(st.member_model(m, best=True)),
                   torch.cat([v.reshape(-1) for k, v in t.best_state.items()
                              if k not in ("rbf.centers",) and "offsets" not in k])) < TOL
        assert st.step[m] == t.step and st.epoch[m] == t.epoch
        for r_alone, r_stack in zip(results, [s[m] for s in stacked], strict=True):
            assert r_stack is not None
            assert r_stack.val.loss == pytest.approx(r_alone.val.loss, rel=1e-12)
            assert r_stack.val.forces_mae == pytest.approx(r_alone.val.forces_mae, rel=1e-12)
            assert r_stack.train_loss == pytest.approx(r_alone.train_loss, rel=1e-12)
            assert r_stack.lr == pytest.approx(r_alone.lr, rel=1e-15)


def test_early_stopped_member_is_frozen_while_the_others_train():
    model_cfg = ModelConfig(**CFG)
    ms = members((9,), early_stopping_patience=2)
    ms[1].config = ms[1].config.model_copy(update={"early_stopping_min_delta": 1e6})  # improves once, then stops
    st = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    epochs = [st.run_epoch() for _ in range(6)]
    assert st.stopped[1] and st.epoch[1] < 6, st.epoch
    assert any(e[1] is None for e in epochs)  # a stopped member reports nothing new
    for m, member in enumerate(ms):
        t, _ = alone(model_cfg, member, 6)
        assert st.epoch[m] == t.epoch and st.stopped[m] == t.should_stop_early()
        assert rel(flat(st.member_model(m, best=False)), flat(t.model)) < TOL
        assert st.best_epoch[m] == t.best_epoch


def test_a_diverged_member_is_named_and_the_others_stay_finite():
    ms = members((9,))
    ms[2].config = ms[2].config.model_copy(update={"lr": 1e12})
    st = StackedTrainer(ModelConfig(**CFG), ms, dtype=torch.float64)
    with pytest.raises(MemberNonFinite) as e:
        for _ in range(3):
            st.run_epoch()
    assert (e.value.member == 2 and "non-finite training loss" in str(e.value)
            and f"epoch {e.value.epoch}" in str(e.value))
    for m in (0, 1):
        assert torch.isfinite(flat(st.member_model(m, best=False))).all()


def test_member_checkpoints_are_trainer_state_dicts_both_ways():
    """A member's state loads into a Trainer that continues exactly, and a Trainer's state into the stack."""
    model_cfg = ModelConfig(**CFG)
    ms = members((9, 5), scheduler="plateau", plateau_patience=1)
    st = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    st.run_epoch()
    st.run_epoch()
    states = [st.member_state_dict(m) for m in range(3)]
    st.run_epoch()
    for m, member in enumerate(ms):
        torch.manual_seed(123)  # a different initialisation: everything must come from the state
        t = Trainer(SchNet(model_cfg).double(), member.train, member.val, member.config)
        t.load_state_dict(copy.deepcopy(states[m]))  # torch's Adam adopts the state's tensors and updates them
        t.run_epoch()
        assert rel(flat(st.member_model(m, best=False)), flat(t.model)) < TOL
        assert t.optimizer.param_groups[0]["lr"] == st.sched[m].lr
    fresh = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    for m in range(3):
        fresh.load_member_state_dict(m, states[m])
    fresh.run_epoch()
    for m in range(3):
        assert rel(flat(fresh.member_model(m, best=False)), flat(st.member_model(m, best=False))) < TOL
        assert fresh.best_val_loss[m] == st.best_val_loss[m]


def test_collation_pads_with_weight_zero_and_the_loss_is_each_members_own():
    """Fillers (one size) and ghosts (sizes differ) change neither energies, forces nor the loss."""
    model_cfg = ModelConfig(**CFG)
    for sizes in ((9,), (3, 9, 5, 12)):
        data = random_molecules(20, sizes=sizes, seed=3)
        sets = [data.subset(np.arange(0, 10)), data.subset(np.arange(10, 16)), data.subset(np.arange(16, 20))]
        col = StackCollator(sets, None, torch.float64)
        picks = [np.arange(8), np.arange(5), np.zeros(0, np.int64)]
        b = col.collate(picks, fill_to=8)
        assert b.weight.sum(1).tolist() == [8.0, 5.0, 0.0]
        models = [SchNet(model_cfg).double() for _ in range(3)]
        from schnet_model.nn.family import stack_states

        p = stack_states([mod.state_dict() for mod in models], model_cfg)
        E, F = energies_forces(p, model_cfg, b.graph(), True, filters="windowed")
        loss = stacked_loss(E, F, b, 0.01, True)
        for m in (0, 1):
            alone_b = sets[m].batch(picks[m], None, torch.float64)
            pred = models[m](alone_b)
            n = len(picks[m])
            assert torch.allclose(E[m, :n], pred.energy, rtol=0, atol=1e-10)
            assert torch.allclose(F[m, : len(alone_b.Z)], pred.forces, rtol=0, atol=1e-10)
            assert float(loss[m]) == pytest.approx(float(energy_force_loss(pred, alone_b, 0.01, True)), rel=1e-12)
        assert float(loss[2]) == 0.0


def test_the_gpu_step_reads_nothing_back_from_the_device():
    """The dense-filter step (the GPU path) runs on PyTorch's ``meta`` device, where any read of
    tensor data (``.item()``, ``.tolist()``, ``bool(t)``, data-dependent shapes) raises: so a
    training step has no host synchronisation, as CUDA-graph capture needs."""
    with pytest.raises(NotImplementedError):
        torch.ones(2, device="meta").tolist()
    for cutoff in (None, 4.0):
        ms = members((9,), grad_clip=1.0)
        st = StackedTrainer(ModelConfig(**CFG, cutoff=cutoff), ms, device="meta")
        assert st.filters == "dense"
        b = st.train_collator.collate([np.arange(8), np.arange(5), np.zeros(0, np.int64)], fill_to=8)
        one = torch.ones(3, dtype=torch.float64, device="meta")
        st._step(b.to("meta"), one, one)
        assert st.flat.device.type == "meta"


def _graphed_and_eager() -> tuple[StackedTrainer, StackedTrainer]:
    """The same three members on CUDA, float64: one trainer with the captured step graph, one eager."""
    model_cfg, ms = ModelConfig(**CFG), members((9,))
    return (StackedTrainer(model_cfg, ms, device="cuda", dtype=torch.float64),
            StackedTrainer(model_cfg, ms, device="cuda", dtype=torch.float64, graphs=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_step_equals_eager_step():
    graphed, eager = _graphed_and_eager()
    assert "CUDA graph" in graphed.mode and "eager" in eager.mode
    for _ in range(2):
        graphed.run_epoch()
        eager.run_epoch()
    for m in range(3):
        assert rel(flat(graphed.member_model(m, best=False)), flat(eager.member_model(m, best=False))) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_refit_offsets_reach_the_captured_cuda_graph():
    """The refit adds to the offsets in place: a step graph captured before it trains with the refit ones."""
    graphed, eager = _graphed_and_eager()
    graphed.run_epoch()
    eager.run_epoch()
    assert "CUDA graph" in graphed.mode and graphed._graph is not None
    assert [r.kept for r in graphed.refit_offsets()] == [r.kept for r in eager.refit_offsets()]
    graphed.run_epoch()
    eager.run_epoch()
    for m in range(3):
        assert torch.allclose(graphed.offsets[ATOMREF][m], eager.offsets[ATOMREF][m], rtol=0, atol=1e-9)
        assert rel(flat(graphed.member_model(m, best=False)), flat(eager.member_model(m, best=False))) < 1e-10


def test_compiled_stacked_step_equals_the_eager_one():
    """The CPU kernels compiled by torch.compile (after COMPILE_AFTER calls) with a member axis of k = 3."""
    from schnet_model.nn.compiled import COMPILE_AFTER

    model_cfg = ModelConfig(**CFG)
    ms = members((3, 9, 5, 12))
    eager = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    compiled = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    compiled._calls = COMPILE_AFTER
    for _ in range(2):
        eager.run_epoch()
        compiled.run_epoch()
    for m in range(3):
        assert rel(flat(compiled.member_model(m, best=False)), flat(eager.member_model(m, best=False))) < TOL


def test_stacked_refit_equals_the_refit_of_members_trained_alone():
    """Same corrections, same decisions; the stack's member models and checkpoints then carry the refit offsets."""
    model_cfg = ModelConfig(**CFG)
    ms = members((3, 9, 5), scheduler="plateau", plateau_patience=1)
    st = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    for _ in range(2):
        st.run_epoch()
    trainers = [alone(model_cfg, member, 2)[0] for member in ms]
    # member 1's validation is exact: a refit spoils it
    ms[1].val.E[:] = st.predict({1: ms[1].val}, best=True)[1].energy
    before = [st.member_model(m).offsets.atomref.clone() for m in range(3)]
    refits = st.refit_offsets()
    assert [r.kept for r in refits] == [True, False, True]
    for m, (member, t) in enumerate(zip(ms, trainers, strict=True)):
        r, s = t.refit_offsets(), refits[m]
        assert s.kept == r.kept and s.elements == r.elements
        for key in ("val_energy_mae_before", "val_energy_mae_after", "train_mean_residual", "val_mean_residual"):
            assert getattr(s, key) == pytest.approx(getattr(r, key), rel=1e-10, abs=1e-11), key
        assert s.correction == pytest.approx(r.correction, rel=1e-9, abs=1e-12)
        state = st.member_state_dict(m)
        for ref in (st.member_model(m).offsets.atomref, st.member_model(m, best=False).offsets.atomref,
                    state["model"][ATOMREF], state["best_state"][ATOMREF]):
            assert torch.allclose(ref, t.best_state[ATOMREF], rtol=0, atol=1e-12)
            assert torch.allclose(ref, t.model.offsets.atomref, rtol=0, atol=1e-12)
        assert s.kept == (not torch.equal(st.member_model(m).offsets.atomref, before[m]))
        pred = st.predict({m: member.val}, best=True)[m]
        assert np.abs(pred.energy - member.val.E).mean() == pytest.approx(s.val_energy_mae_after if s.kept else
                                                                         s.val_energy_mae_before, rel=1e-9, abs=1e-11)


def test_a_finalists_fold_0_goes_on_from_its_screening_while_the_other_folds_start_afresh():
    """search.warm_start: the final rung loads the screening's fold-0 state into member 0 only; member 0 then trains
    exactly as the screened Trainer would have gone on, several epochs ahead of the others, and the fresh members
    exactly as Trainers started from scratch."""
    model_cfg = ModelConfig(**CFG)
    ms = members((9, 5), n_members=2)
    screened, _ = alone(model_cfg, ms[0], 3)  # fold 0 screened for 3 epochs
    state = copy.deepcopy(screened.state_dict())
    torch.manual_seed(0)
    st = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    st.load_member_state_dict(0, state)
    for _ in range(2):
        st.run_epoch()
    for _ in range(2):
        screened.run_epoch()
    fresh, _ = alone(model_cfg, ms[1], 2)
    assert st.epoch[0] == 5 and st.epoch[1] == 2
    assert rel(flat(st.member_model(0, best=False)), flat(screened.model)) < TOL
    assert rel(flat(st.member_model(1, best=False)), flat(fresh.model)) < TOL


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_a_budget_horizon_set_on_the_stack_equals_the_same_horizon_set_on_each_trainer(scheduler: str):
    """A time budget's horizon (set_horizon) gives every stacked member the Trainer's learning rates and weights: a
    cosine decays over it, a plateau schedule anneals over its last fifth; both end at min_lr."""
    model_cfg = ModelConfig(**CFG)
    ms = members((9, 5), scheduler=scheduler, min_lr=1e-6, max_epochs=500)
    st = StackedTrainer(model_cfg, ms, dtype=torch.float64)
    alone_trainers = []
    for member in ms:
        torch.manual_seed(member.config.seed)
        t = Trainer(SchNet(model_cfg).double(), member.train, member.val, member.config)
        alone_trainers.append(t)
    for epoch in range(3):
        st.run_epoch()
        assert st.set_horizon(3 - epoch - 1)
        for t in alone_trainers:
            t.run_epoch()
            assert t.set_horizon(3 - epoch - 1)
    for m, t in enumerate(alone_trainers):
        assert st.sched[m].lr == pytest.approx(1e-6) and t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)
        assert rel(flat(st.member_model(m, best=False)), flat(t.model)) < TOL
