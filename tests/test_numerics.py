"""The fast model against a plain dense SchNet written straight from the paper.

The reference below uses all 300 Gaussians for every pair, every directed pair of the list,
one interaction at a time and autograd for everything (forces by ``autograd.grad`` with
``create_graph``, the loss gradient by a second backward). It evaluates in float64 with the
model's weights cast up, so its own rounding error (~1e-16) is far below the bounds.

Bounds (norm-wise relative errors; elementwise relative errors are meaningless for force
components or gradient entries that happen to be near zero):

- float32 fast path vs float64 reference: energies (network part) < 1e-5, forces < 1e-5,
  gradient of the training loss for every parameter tensor < 1e-5. float32 carries 6e-8
  relative per operation; the model stacks ~10 layers and sums of up to ~300 terms, so
  errors of a few 1e-7 are the float32 floor. The test also runs the *reference itself* in
  float32 and requires the fast path to be no worse than 4× that floor (+1e-7).
- float64 fast path vs float64 reference: < 1e-8. The Gaussian-window truncation is
  ≤ 2.2e-19 relative there; the largest difference is torch's softplus, which is linear above
  x = 20 (``softplus(x) = x``, error e⁻²⁰ ≈ 2e-9) with derivative exactly 1 there, while the fast
  path's explicit force backward uses ``sigmoid(x) = 1 − e⁻ˣ``; random weights reach x > 20.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_molecules

from schnet_model import ModelConfig, SchNet
from schnet_model.data.batch import Batch
from schnet_model.nn.compiled import COMPILE_AFTER
from schnet_model.training.loss import energy_force_loss


def ssp(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(x) - np.log(2.0)


def reference_energy(p: dict[str, torch.Tensor], cfg: ModelConfig, b: Batch, R: torch.Tensor) -> torch.Tensor:
    """SchNet (Schütt et al. 2017) as written in the paper, dense, all pairs of the list."""
    i, j = b.idx_i, b.idx_j
    d = torch.linalg.vector_norm(R[j] - R[i], dim=1)  # [n_pairs]
    mu = torch.arange(cfg.n_rbf, dtype=R.dtype) * cfg.rbf_spacing
    rbf = torch.exp(-cfg.gamma * (d[:, None] - mu) ** 2)  # [n_pairs, 300]
    if cfg.cutoff is not None:
        fcut = 0.5 * (torch.cos(d * np.pi / cfg.cutoff) + 1.0) * (d < cfg.cutoff)
    x = p["embedding.weight"][b.Z]
    for t in range(cfg.n_interactions):
        q = f"interactions.{t}."
        h = x @ p[q + "in2f.weight"].T
        w = ssp(rbf @ p[q + "filter_net.0.0.weight"].T + p[q + "filter_net.0.0.bias"])
        w = w @ p[q + "filter_net.1.weight"].T + p[q + "filter_net.1.bias"]  # [n_pairs, F]
        if cfg.cutoff is not None:
            w = w * fcut[:, None]
        conv = torch.zeros_like(h).index_add(0, i, h[j] * w)  # Σ_j h_j ∘ W_ij
        v = ssp(conv @ p[q + "f2out.0.0.weight"].T + p[q + "f2out.0.0.bias"])
        x = x + v @ p[q + "f2out.1.weight"].T + p[q + "f2out.1.bias"]
    y = ssp(x @ p["output.0.0.weight"].T + p["output.0.0.bias"]) @ p["output.1.weight"].T + p["output.1.bias"]
    e_atom = y[:, 0].double() * p["offsets.scale"] + p["offsets.atomref"][b.Z]
    return torch.zeros(b.n_mols, dtype=torch.float64).index_add(0, b.mol, e_atom)


def reference(model: SchNet, b: Batch, dtype: torch.dtype = torch.float64):
    """(energy, forces, {name: ∂loss/∂param}) of the reference, in ``dtype``."""
    params = {k: v.detach().to(dtype) if v.is_floating_point() and "offsets" not in k else v.detach()
              for k, v in model.state_dict().items()}
    leaves = {k: v.requires_grad_(True) for k, v in params.items() if k in dict(model.named_parameters())}
    R = b.R.detach().to(dtype).requires_grad_(True)
    energy = reference_energy(params, model.config, b, R)
    (g,) = torch.autograd.grad(energy.sum(), R, create_graph=True)
    forces = -g
    loss = 0.01 * (energy - b.E) ** 2
    f_sq = ((forces - b.F.to(dtype)) ** 2).sum(1).double()
    loss = (loss + torch.zeros_like(loss).index_add(0, b.mol, f_sq) / b.n_atoms).mean()
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return energy.detach(), forces.detach(), {
        k: (gr if gr is not None else torch.zeros_like(leaves[k])) for k, gr in zip(leaves, grads, strict=True)
    }


def fast(model: SchNet, b: Batch, compiled: bool = False):
    """Energy, forces and loss gradient of the fast path (eager kernels, or compiled ones)."""
    model._fast_calls = COMPILE_AFTER if compiled else 0
    model.zero_grad(set_to_none=True)
    pred = model(b, forces=True, create_graph=True)
    loss = energy_force_loss(pred, b, 0.01, True)
    loss.backward()
    grads = {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in model.named_parameters()}
    return pred.energy.detach(), pred.forces.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against b."""
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def random_model(seed: int, **cfg) -> SchNet:
    """Paper-sized model with random (not just initial) weights and offsets."""
    torch.manual_seed(seed)
    model = SchNet(ModelConfig(**cfg))
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if "bias" in name else 1.0
            p.add_(torch.randn_like(p) * scale * (p.std() if p.numel() > 1 and p.std() > 0 else 0.1))
    ref = np.zeros(100)
    ref[[1, 6, 7, 8]] = [-0.5, -37.8, -54.6, -75.0]
    model.offsets.set(ref, 3.0)
    return model


def network_part(energy: torch.Tensor, model: SchNet, b: Batch) -> torch.Tensor:
    """Energy without the per-element references (the part the network computes)."""
    refs = torch.zeros(b.n_mols, dtype=torch.float64).index_add(0, b.mol, model.offsets.atomref[b.Z])
    return energy - refs


CASES = [
    ("mixed sizes, all pairs", dict(), (3, 9, 5, 12, 21, 19), None),
    ("aspirin-sized", dict(), (21,), None),
    ("cosine cutoff 4 Å", dict(cutoff=4.0), (9, 15, 21), 4.0),
    ("small model", dict(n_atom_basis=32, n_filters=16, n_interactions=2, rbf_max=12.0), (6, 13), None),
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(("name", "cfg", "sizes", "cutoff"), CASES, ids=[c[0] for c in CASES])
def test_float32_fast_path_matches_dense_reference(name, cfg, sizes, cutoff, compiled):
    model = random_model(1, **cfg)
    data = random_molecules(12, sizes=sizes, seed=4)
    b = data.batch(np.arange(len(data)), cutoff, torch.float64)
    e_ref, f_ref, g_ref = reference(model, b, torch.float64)
    e32, f32, g32 = reference(model, b, torch.float32)  # the float32 floor
    b32 = data.batch(np.arange(len(data)), cutoff, torch.float32)
    e, f, g = fast(model.float(), b32, compiled)
    floor_e = rel(network_part(e32, model, b), network_part(e_ref, model, b))
    err_e = rel(network_part(e, model, b), network_part(e_ref, model, b))
    assert err_e < 1e-5 and err_e <= 4 * floor_e + 1e-7, (err_e, floor_e)
    err_f, floor_f = rel(f, f_ref), rel(f32, f_ref)
    assert err_f < 1e-5 and err_f <= 4 * floor_f + 1e-7, (err_f, floor_f)
    for k in g_ref:
        err, floor = rel(g[k], g_ref[k]), rel(g32[k], g_ref[k])
        if float(torch.linalg.vector_norm(g_ref[k])) == 0.0:  # e.g. embedding rows of absent elements
            assert float(torch.linalg.vector_norm(g[k])) == 0.0, k
            continue
        assert err < 1e-5 and err <= 4 * floor + 1e-7, (k, err, floor)


def assert_agrees(got, ref, model: SchNet, b: Batch, tol: float) -> None:
    """Energy (network part), forces and every non-zero loss gradient within ``tol`` (norm-wise)."""
    (e, f, g), (e_ref, f_ref, g_ref) = got, ref
    assert rel(network_part(e, model, b), network_part(e_ref, model, b)) < tol
    assert rel(f, f_ref) < tol
    for k in g_ref:
        if float(torch.linalg.vector_norm(g_ref[k])) > 0:
            assert rel(g[k], g_ref[k]) < tol, k


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize(("name", "cfg", "sizes", "cutoff"), CASES, ids=[c[0] for c in CASES])
def test_float64_fast_path_matches_dense_reference(name, cfg, sizes, cutoff, compiled):
    model = random_model(2, **cfg).double()
    data = random_molecules(6, sizes=sizes, seed=5)
    b = data.batch(np.arange(len(data)), cutoff, torch.float64)
    e_ref, f_ref, g_ref = reference(model, b)
    assert_agrees(fast(model, b, compiled), (e_ref, f_ref, g_ref), model, b, 1e-8)


def test_inference_and_energy_only_paths_match_reference():
    model = random_model(3)
    data = random_molecules(8, sizes=(9, 21), seed=6)
    b = data.batch(np.arange(len(data)), None, torch.float64)
    e_ref, f_ref, _ = reference(model, b)
    b32 = data.batch(np.arange(len(data)), None, torch.float32)
    model.float()
    with torch.no_grad():
        pred = model(b32, forces=True)
        e_only = model(b32, forces=False).energy
    assert not pred.energy.requires_grad and not pred.forces.requires_grad
    assert rel(network_part(pred.energy, model, b), network_part(e_ref, model, b)) < 1e-5
    assert rel(pred.forces, f_ref) < 1e-5
    assert rel(network_part(e_only, model, b), network_part(pred.energy, model, b)) < 1e-6
    # energy-only training gradient
    model.zero_grad()
    ((model(b32, forces=False).energy - b.E) ** 2).mean().backward()
    params = {k: v.detach().double().requires_grad_(True)
              for k, v in model.state_dict().items() if v.is_floating_point()}
    params["offsets.atomref"], params["offsets.scale"] = model.offsets.atomref, model.offsets.scale
    ref_loss = ((reference_energy(params, model.config, b, b.R) - b.E) ** 2).mean()
    names = [k for k, _ in model.named_parameters()]
    ref_grads = torch.autograd.grad(ref_loss, [params[k] for k in names], allow_unused=True)
    for k, gr in zip(names, ref_grads, strict=True):
        got = dict(model.named_parameters())[k].grad
        if gr is None or float(torch.linalg.vector_norm(gr)) == 0:
            continue
        assert rel(got, gr) < 1e-5, k


def test_asymmetric_pair_list_uses_directed_filters():
    """A pair list that is not symmetric (here: one direction dropped) is not halved."""
    model = random_model(4, n_atom_basis=16, n_filters=16, n_interactions=2).double()
    data = random_molecules(2, sizes=(7,), seed=8)
    b = data.batch(np.arange(2), None, torch.float64)
    keep = torch.ones(len(b.idx_i), dtype=torch.bool)
    keep[3] = False
    b = Batch(**{**b.__dict__, "idx_i": b.idx_i[keep], "idx_j": b.idx_j[keep]})
    e_ref, f_ref, g_ref = reference(model, b)
    assert_agrees(fast(model, b), (e_ref, f_ref, g_ref), model, b, 1e-9)


def test_positions_requiring_grad_take_the_autograd_path_and_agree():
    model = random_model(5, n_atom_basis=16, n_filters=16, n_interactions=2).double()
    data = random_molecules(3, sizes=(5, 8), seed=9)
    b = data.batch(np.arange(3), None, torch.float64)
    p_fast = model(b)
    R = b.R.clone().requires_grad_(True)
    p_auto = model(Batch(**{**b.__dict__, "R": R}), create_graph=True)
    assert rel(p_fast.forces, p_auto.forces.detach()) < 1e-12
    (hess_row,) = torch.autograd.grad(p_auto.forces[0, 0], R)  # second derivatives need the autograd path
    assert torch.isfinite(hess_row).all()


def test_compiled_kernels_are_bitwise_reproducible_across_thread_counts():
    model = random_model(6)
    data = random_molecules(6, sizes=(9, 21), seed=10)
    b = data.batch(np.arange(6), None, torch.float32)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            runs.append(fast(model, b, compiled=True))
    finally:
        torch.set_num_threads(threads)
    for e, f, g in runs[1:]:
        assert torch.equal(e, runs[0][0]) and torch.equal(f, runs[0][1])
        assert all(torch.equal(g[k], runs[0][2][k]) for k in g)


def test_gaussian_window_truncation_bound():
    """Every Gaussian the fast path drops is below eps·2⁻¹⁰ of the largest one."""
    model = SchNet()
    for dtype in (torch.float32, torch.float64):
        d = torch.linspace(0.5, 12.0, 400, dtype=torch.float64)
        k0, k1 = model.rbf.window(float(d[0]), float(d[-1]), dtype)
        dense = model.rbf(d)
        outside = torch.cat([dense[:, :k0], dense[:, k1:]], 1)
        assert float(outside.max()) <= torch.finfo(dtype).eps * 2.0**-10
        for x in d[::37]:  # a single distance needs only about 31 (float32) of 300 centres
            k0, k1 = model.rbf.window(float(x), float(x), dtype)
            assert k1 - k0 <= (33 if dtype == torch.float32 else 44)


@pytest.mark.parametrize("filters", ["windowed", "dense"])
@pytest.mark.parametrize("shared", [False, True], ids=["own batches", "shared input"])
@pytest.mark.parametrize(("name", "cfg", "sizes", "cutoff"), CASES[::2], ids=[c[0] for c in CASES[::2]])
def test_every_member_of_a_stack_matches_the_dense_reference(name, cfg, sizes, cutoff, shared, filters):
    """The core with k = 3 stacked members (each its own batch, or one input shared by all) against
    the dense reference of each member alone: energies, forces and loss gradients, float64 and float32."""
    from schnet_model.data.stack import StackCollator, stacked_loss
    from schnet_model.nn.core import energies_forces
    from schnet_model.nn.family import stack_states

    models = [random_model(10 + m, **cfg) for m in range(3)]
    data = random_molecules(12, sizes=sizes, seed=7)
    sets = [data.subset(np.arange(0, 6))] * 3 if shared else [data.subset(np.arange(m, m + 6)) for m in range(3)]
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-5)):
        leaves = {key: v.to(dtype if key not in ("offsets.atomref", "offsets.scale") else torch.float64).requires_grad_(
            key not in ("offsets.atomref", "offsets.scale"))
            for key, v in stack_states([m.state_dict() for m in models], models[0].config).items()}
        b = StackCollator(sets, cutoff, dtype).collate([np.arange(6)] * 3)
        graph = b.graph()
        if shared:  # one input row for all members
            from schnet_model.nn.core import Graph

            graph = Graph(graph.Z[:1], graph.R[:1], graph.mol[:1], graph.n_mols, graph.pi[:1], graph.pj[:1])
        E, F = energies_forces(leaves, models[0].config, graph, True, create_graph=True, filters=filters)
        loss = stacked_loss(E, F, b, 0.01, True)
        grads = torch.autograd.grad(loss.sum(), [v for v in leaves.values() if v.requires_grad])
        names = [key for key, v in leaves.items() if v.requires_grad]
        for m, model in enumerate(models):
            ref_b = sets[m].batch(np.arange(6), cutoff, torch.float64)
            e_ref, f_ref, g_ref = reference(model, ref_b)
            n_atoms = len(ref_b.Z)
            assert rel(network_part(E[m, :6].detach(), model, ref_b), network_part(e_ref, model, ref_b)) < tol
            assert rel(F[m, :n_atoms].detach(), f_ref) < tol
            for key, g in zip(names, grads, strict=True):
                if float(torch.linalg.vector_norm(g_ref[key])) > 0:
                    assert rel(g[m], g_ref[key]) < tol, (key, m, dtype)
