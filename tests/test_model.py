"""SchNet: parameter count, invariances, forces, batching, numerics of the offsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_molecules, small_model

from schnet_model import ModelConfig, SchNet, shifted_softplus
from schnet_model.nn.offsets import fit_offsets


def test_paper_size_parameter_count():
    # schnetpack 2.1.1 SchNet(n_atom_basis=64, n_filters=64, n_interactions=3, GaussianRBF(300, 30 Å)) + Atomwise(64)
    assert SchNet(ModelConfig()).n_parameters() == 116_033
    assert ModelConfig().n_rbf == 300


@pytest.mark.parametrize("size", [(32, 32, 2), (64, 64, 3), (128, 128, 6)])
def test_table1_configurations_expressible(size):
    f, nf, ni = size
    m = SchNet(ModelConfig(n_atom_basis=f, n_filters=nf, n_interactions=ni))
    assert len(m.interactions) == ni and m.embedding.weight.shape == (100, f)


def test_rbf_centres_and_width():
    m = SchNet()
    c = m.rbf.centers
    assert c.shape == (300,) and c[0] == 0 and abs(float(c[-1]) - 29.9) < 1e-5
    g = m.rbf(torch.tensor([1.0]))
    assert abs(float(g[0, 10]) - 1.0) < 1e-6  # centre at 1.0 Å
    assert abs(float(g[0, 11]) - math.exp(-10 * 0.01)) < 1e-6


def test_shifted_softplus_stable_at_large_inputs():
    x = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4], requires_grad=True)
    y = shifted_softplus(x)
    assert torch.isfinite(y).all()
    y, y_graph = y.detach(), y
    assert float(y[2]) == pytest.approx(0.0, abs=1e-7)
    assert float(y[4]) == pytest.approx(1e4 - math.log(2), rel=1e-6)
    assert float(y[0]) == pytest.approx(-math.log(2), rel=1e-6)
    y_graph.sum().backward()
    assert torch.allclose(x.grad, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]), atol=1e-6)
    # the naive formula is what failed in the seed
    naive = torch.log(0.5 * torch.exp(torch.tensor(1e4)) + 0.5)
    assert not torch.isfinite(naive)


def _pred(model, data):
    dtype = next(model.parameters()).dtype
    b = data.batch(np.arange(len(data)), model.config.cutoff, dtype)
    return model(b)


def test_rotation_translation_invariance_and_force_equivariance():
    data = random_molecules(4)
    model = small_model()
    p0 = _pred(model, data)
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))  # a proper rotation
    moved = data.subset(np.arange(len(data)))
    moved.R = data.R @ rot.T + np.array([3.0, -7.0, 1.5])
    moved._torch = None
    p1 = _pred(model, moved)
    assert torch.allclose(p0.energy, p1.energy, rtol=0, atol=1e-9)
    assert torch.allclose(p0.forces @ torch.tensor(rot.T), p1.forces, atol=1e-9)


def test_permutation_invariance():
    data = random_molecules(1, sizes=(9,))
    model = small_model()
    perm = np.random.default_rng(1).permutation(9)
    permuted = data.subset([0])
    permuted.Z, permuted.R, permuted.F = data.Z[perm], data.R[perm], data.F[perm]
    permuted._torch = None
    p0, p1 = _pred(model, data), _pred(model, permuted)
    assert torch.allclose(p0.energy, p1.energy, atol=1e-9)
    assert torch.allclose(p0.forces[perm], p1.forces, atol=1e-9)


@pytest.mark.parametrize("cutoff", [None, 3.0])
def test_forces_match_central_finite_differences(cutoff):
    data = random_molecules(1, sizes=(6,), seed=3)
    model = small_model(cutoff=cutoff)
    b = data.batch(np.arange(1), cutoff, torch.float64)
    forces = model(b).forces
    h = 1e-5
    fd = torch.zeros_like(forces)
    for a in range(6):
        for k in range(3):
            R = b.R.clone()
            R[a, k] += h
            ep = model(b.__class__(**{**b.__dict__, "R": R}), forces=False).energy
            R[a, k] -= 2 * h
            em = model(b.__class__(**{**b.__dict__, "R": R}), forces=False).energy
            fd[a, k] = -(ep - em) / (2 * h)
    assert torch.allclose(forces, fd, atol=1e-6, rtol=1e-6)


def test_batch_of_different_molecules_equals_each_alone():
    data = random_molecules(5, sizes=(3, 9, 5, 7, 2))
    model = small_model(torch.float32)
    full = _pred(model.double(), data)
    for m in range(len(data)):
        alone = _pred(model, data.subset([m]))
        atoms = slice(data.atom_ptr[m], data.atom_ptr[m + 1])
        assert torch.allclose(full.energy[m], alone.energy[0], atol=1e-9)
        assert torch.allclose(full.forces[atoms], alone.forces, atol=1e-9)


def test_cutoff_pair_list_matches_all_pairs_with_cutoff_function():
    """Pairs beyond the cutoff contribute nothing: vesin lists give the all-pairs result."""
    data = random_molecules(3, sizes=(9,), seed=5)
    model = small_model(cutoff=2.5)
    b_cut = data.batch(np.arange(3), 2.5, torch.float64)
    b_all = data.batch(np.arange(3), None, torch.float64)
    assert len(b_cut.idx_i) < len(b_all.idx_i)
    p_cut, p_all = model(b_cut), model(b_all)
    assert torch.allclose(p_cut.energy, p_all.energy, atol=1e-10)
    assert torch.allclose(p_cut.forces, p_all.forces, atol=1e-10)


def test_offsets_stay_float64_and_large_totals_are_exact():
    """MD17-sized totals (~ -4e5 kcal/mol) must not lose precision in float32."""
    data = random_molecules(20, sizes=(21,), seed=2)
    data.E = data.E * 0 - 406_000.0 + np.random.default_rng(0).normal(0, 3.0, 20)
    ref, scale = fit_offsets(data.Z, data.atom_ptr, data.E, data.F)
    model = small_model(torch.float32)
    model.offsets.set(ref, scale)
    model.float()
    assert model.offsets.atomref.dtype == torch.float64 and model.offsets.scale.dtype == torch.float64
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # network outputs 0: energy = Σ E_ref exactly
    pred = _pred(model, data)
    assert pred.energy.dtype == torch.float64
    expected = np.array([ref[data.Z[a:b]].sum() for a, b in zip(data.atom_ptr[:-1], data.atom_ptr[1:])])
    assert np.allclose(pred.energy.numpy(), expected, rtol=0, atol=1e-8)
    # a single composition: the least-squares references reproduce the mean energy
    assert abs(expected.mean() - data.E.mean()) < 1e-6


def test_fit_offsets_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    true = {1: -0.5, 6: -37.8, 8: -75.0}
    data = random_molecules(60, sizes=(3, 5, 7, 9, 4), seed=1)
    data.E = np.array([sum(true.get(int(z), 0) for z in data.Z[a:b])
                       for a, b in zip(data.atom_ptr[:-1], data.atom_ptr[1:])])
    data.E += rng.normal(0, 1e-6, len(data))
    Zmask = np.isin(data.Z, [1, 6, 8])
    data.Z = np.where(Zmask, data.Z, 1)  # only H, C, O
    data.E = np.array([sum(true[int(z)] for z in data.Z[a:b]) for a, b in zip(data.atom_ptr[:-1], data.atom_ptr[1:])])
    ref, scale = fit_offsets(data.Z, data.atom_ptr, data.E, None)
    for z, e in true.items():
        assert ref[z] == pytest.approx(e, abs=1e-8)
    assert scale == 1.0  # zero residual → the neutral scale
