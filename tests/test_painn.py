"""PaiNN in the member-axis core (schnet_model/nn/painn.py): schnetpack's numerics, symmetries, forces, members."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import QUICKSTART_DATA, ROOT

from schnet_model.config import PaiNNConfig
from schnet_model.data.graph import Graph
from schnet_model.nn.painn import init_painn, painn_energies_forces, painn_layout

REFERENCE = ROOT / "tests" / "data" / "painn_schnetpack_reference.npz"


def graph(R: torch.Tensor, Z: torch.Tensor) -> Graph:
    """Molecules [kz, n_mols, n_atoms, 3] (kz = 1 shared, or one per member), every unordered pair in a molecule."""
    kz, m, n = R.shape[:3]
    i, j = torch.triu_indices(n, n, 1)
    pi = torch.cat([i + s * n for s in range(m)])
    pj = torch.cat([j + s * n for s in range(m)])
    mol = torch.arange(m).repeat_interleave(n)
    return Graph(Z.repeat(m)[None].expand(kz, -1), R.reshape(kz, m * n, 3), mol[None].expand(kz, -1), m,
                 pi[None].expand(kz, -1), pj[None].expand(kz, -1))


def ethanol(frames: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(QUICKSTART_DATA)
    return torch.tensor(d["R"][:frames]), torch.tensor(d["z"].astype(np.int64))


@pytest.mark.parametrize("name", ["separate", "shared_short"])
def test_energies_and_forces_equal_schnetpack_painn_with_its_weights(name):
    ref = np.load(REFERENCE)
    c = json.loads(str(ref[f"{name}/config"]))
    rows = ref[f"{name}/param/representation.embedding.weight"].shape[0]
    cfg = PaiNNConfig(**c, max_z=rows)
    def theirs(key: str) -> str:  # schnetpack's name of one of our parameters
        if key.startswith("output."):
            return f"{name}/param/output_modules.0.outnet.{key[len('output.'):]}"
        return f"{name}/param/representation.{key}"

    # schnetpack's model here has no offsets: zero references, scale 1
    p = {key: torch.tensor(ref[theirs(key)])[None] for key in painn_layout(cfg) if not key.startswith("offsets.")}
    buffers = {f"{name}/param/representation.cutoff_fn.cutoff", f"{name}/param/representation.radial_basis.freqs"}
    assert {theirs(key) for key in p} | buffers == {k for k in ref.files if k.startswith(f"{name}/param/")}
    assert float(ref[f"{name}/param/representation.cutoff_fn.cutoff"].reshape(-1)[0]) == cfg.cutoff  # same basis
    np.testing.assert_allclose(ref[f"{name}/param/representation.radial_basis.freqs"],
                               np.arange(1, cfg.n_rbf + 1) * np.pi / cfg.cutoff, rtol=1e-6)
    p["offsets.atomref"] = torch.zeros(1, rows, dtype=torch.float64)
    p["offsets.scale"] = torch.ones(1, dtype=torch.float64)
    R, Z = torch.tensor(ref["R"]), torch.tensor(ref["Z"])
    E, F = painn_energies_forces(p, cfg, graph(R[None].float(), Z))
    scale = np.abs(ref[f"{name}/energy"]).max()
    # float32 in both; schnetpack sums the atoms' energies in float32, we in float64
    np.testing.assert_allclose(E[0].numpy(), ref[f"{name}/energy"], rtol=0, atol=2e-6 * max(scale, 1.0))
    fscale = np.abs(ref[f"{name}/forces"]).max()
    np.testing.assert_allclose(F[0].reshape(ref[f"{name}/forces"].shape).numpy(), ref[f"{name}/forces"], rtol=0,
                               atol=2e-5 * max(fscale, 1.0))


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.linalg.det(q))


def test_energy_is_invariant_and_forces_equivariant_under_rotation_translation_and_permutation():
    cfg = PaiNNConfig(n_atom_basis=16, n_interactions=2, cutoff=3.0)
    p = {k: v.double() if v.dtype == torch.float32 else v for k, v in init_painn(cfg, k=1, seed=3).items()}
    R, Z = ethanol(2)
    E, F = painn_energies_forces(p, cfg, graph(R[None], Z))
    Q, t = _rotation(1), torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64)
    E2, F2 = painn_energies_forces(p, cfg, graph((R @ Q.T + t)[None], Z))
    torch.testing.assert_close(E2, E, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(F2, F @ Q.T, rtol=1e-9, atol=1e-9)
    perm = torch.randperm(len(Z), generator=torch.Generator().manual_seed(0))
    E3, F3 = painn_energies_forces(p, cfg, graph(R[:, perm][None], Z[perm]))
    torch.testing.assert_close(E3, E, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(F3.reshape(2, -1, 3), F.reshape(2, -1, 3)[:, perm], rtol=1e-9, atol=1e-9)
    assert float(F.reshape(2, -1, 3).sum(1).abs().max()) < 1e-10  # no net force on an isolated molecule


def test_forces_are_minus_the_energy_gradient_by_finite_differences():
    cfg = PaiNNConfig(n_atom_basis=8, n_interactions=2, cutoff=2.5)
    p = {k: v.double() if v.dtype == torch.float32 else v for k, v in init_painn(cfg, k=1, seed=5).items()}
    R, Z = ethanol(1)
    _, F = painn_energies_forces(p, cfg, graph(R[None], Z))
    h = 1e-5
    for atom, axis in [(0, 0), (4, 1), (8, 2)]:
        Rp, Rm = R.clone(), R.clone()
        Rp[0, atom, axis] += h
        Rm[0, atom, axis] -= h
        Ep, _ = painn_energies_forces(p, cfg, graph(Rp[None], Z), forces=False)
        Em, _ = painn_energies_forces(p, cfg, graph(Rm[None], Z), forces=False)
        assert float(F[0, atom, axis]) == pytest.approx(-float(Ep - Em) / (2 * h), rel=1e-6, abs=1e-8)


def test_stacked_members_equal_each_member_alone_on_shared_and_own_inputs():
    cfg = PaiNNConfig(n_atom_basis=16, n_interactions=3, cutoff=4.0, n_rbf=10)
    p = init_painn(cfg, k=3, seed=11)
    p["offsets.atomref"][:, [1, 6, 8]] = torch.tensor([-0.5, -38.0, -75.0], dtype=torch.float64)
    R, Z = ethanol(2)
    R = R.float()
    E, F = painn_energies_forces(p, cfg, graph(R[None], Z))  # one input, three members
    own = torch.stack([R, R + 0.05, R - 0.05])  # one input per member
    Ek, Fk = painn_energies_forces(p, cfg, graph(own, Z))
    for m in range(3):
        alone = {k: v[m:m + 1] for k, v in p.items()}
        Em, Fm = painn_energies_forces(alone, cfg, graph(R[None], Z))
        torch.testing.assert_close(E[m:m + 1], Em, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(F[m:m + 1], Fm, rtol=1e-5, atol=1e-5)
        Eo, Fo = painn_energies_forces(alone, cfg, graph(own[m:m + 1], Z))
        torch.testing.assert_close(Ek[m:m + 1], Eo, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(Fk[m:m + 1], Fo, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(E[0], E[1])  # the members differ
    assert E.dtype == torch.float64 and math.isfinite(float(E.sum()))


@pytest.mark.parametrize("variant", [{}, {"shared_filters": True}, {"shared_interactions": True, "n_interactions": 1}])
@pytest.mark.parametrize("inputs", ["shared", "own", "directed"])
def test_explicit_force_backward_equals_autograd_in_forces_and_the_training_gradient(variant, inputs):
    """The explicit backward (no double backward) gives autograd's forces, and a force loss's parameter gradient
    through it equals the one through autograd's double backward (float64, to rounding)."""
    cfg = PaiNNConfig(**{"n_atom_basis": 8, "n_interactions": 2, "cutoff": 3.0, "n_rbf": 6, **variant})
    p = {k: v.double() if v.dtype == torch.float32 else v for k, v in init_painn(cfg, k=3, seed=7).items()}
    p["offsets.scale"] = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    R, Z = ethanol(2)
    g = graph(R[None] if inputs == "shared" else torch.stack([R, R + 0.03, R - 0.02]), Z)
    if inputs == "directed":  # every pair listed both ways, as a directed list
        g = Graph(g.Z, g.R, g.mol, g.n_mols, torch.cat([g.pi, g.pj], 1), torch.cat([g.pj, g.pi], 1), directed=True)
    target = torch.randn(3, g.Z.shape[1], 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = {}
    for by in ("explicit", "autograd"):
        q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        E, F = painn_energies_forces(q, cfg, g, create_graph=True, forces_by=by)
        loss = ((F - target) ** 2).sum() + 0.1 * E.pow(2).sum() * 1e-4
        grads[by] = (E.detach(), F.detach(), torch.autograd.grad(loss, list(q.values())))
    (E1, F1, g1), (E2, F2, g2) = grads["explicit"], grads["autograd"]
    torch.testing.assert_close(E1, E2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F1, F2, rtol=1e-10, atol=1e-12)
    assert float(F1.abs().max()) > 1e-3  # forces are not trivially zero
    for key, a, b in zip(p, g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m, key=key: f"{key}: {m}")


def test_compiled_blocks_equal_the_eager_ones_in_forces_and_the_training_gradient():
    """``torch.compile`` of the blocks and their explicit backward (the CPU training path) computes what the eager
    code does, for a stack with one input per member."""
    cfg = PaiNNConfig(n_atom_basis=16, n_interactions=2, cutoff=4.0, n_rbf=8)
    p = init_painn(cfg, k=2, seed=2)
    R, Z = ethanol(3)
    g = graph(torch.stack([R, R + 0.02]).float(), Z)
    out = {}
    for compiled in (False, True):
        q = {k: v.clone().requires_grad_(v.dtype == torch.float32) for k, v in p.items()}
        E, F = painn_energies_forces(q, cfg, g, create_graph=True, compiled=compiled)
        loss = (F ** 2).sum() + 1e-3 * E.float().pow(2).sum()
        out[compiled] = (E.detach(), F.detach(), torch.autograd.grad(loss, [v for v in q.values() if v.requires_grad]))
    from schnet_model.nn import painn_blocks
    assert painn_blocks._kernel.compiled is not None and not painn_blocks._kernel.failed  # it did compile
    (E1, F1, g1), (E2, F2, g2) = out[False], out[True]
    torch.testing.assert_close(E2, E1, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(F2, F1, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
