"""SchNet (Schütt et al. 2017): energies and forces of molecules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from schnet_model.config import ModelConfig
from schnet_model.data.batch import Batch
from schnet_model.nn.atomwise import atomwise
from schnet_model.nn.compiled import COMPILE_AFTER
from schnet_model.nn.filters import FilterBank, filter_forward, make_plan
from schnet_model.nn.interaction import Interaction, dense
from schnet_model.nn.offsets import EnergyOffsets
from schnet_model.nn.pairs import unordered_pairs
from schnet_model.nn.radial import CosineCutoff, GaussianRBF


@dataclass(frozen=True)
class Prediction:
    """Model output for a batch."""

    energy: torch.Tensor  # [n_mols] float64
    forces: torch.Tensor | None  # [n_atoms, 3], dtype of the positions


class SchNet(nn.Module):
    """SchNet with an atom-wise energy head and autograd forces.

    Embedding (``max_z`` rows, Z < max_z) → ``n_interactions`` × :class:`Interaction` →
    atom-wise MLP n_atom_basis → n_output_hidden (ssp) → 1 → energy offsets (float64) → sum
    per molecule. Forces are ``F = −∂E/∂R``.

    Args:
        config: architecture hyperparameters (paper defaults, see :class:`ModelConfig`).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        self.embedding = nn.Embedding(config.max_z, config.n_atom_basis, padding_idx=0)
        self.rbf = GaussianRBF(config.n_rbf, config.rbf_spacing, config.gamma)
        self.cutoff = CosineCutoff(config.cutoff) if config.cutoff is not None else None
        self.interactions = nn.ModuleList(
            Interaction(config.n_atom_basis, config.n_filters, config.n_rbf)
            for _ in range(config.n_interactions)
        )
        hidden = config.n_output_hidden or max(1, config.n_atom_basis // 2)
        self.output = nn.Sequential(dense(config.n_atom_basis, hidden, activation=True), dense(hidden, 1))
        self.offsets = EnergyOffsets(config.max_z)
        self._fast_calls = 0  # fast-path calls so far; kernels are compiled after COMPILE_AFTER

    def atomwise(self, batch: Batch, R: torch.Tensor) -> torch.Tensor:
        """Atom-wise network outputs y_i [n_atoms] (before scale and references)."""
        vec = torch.index_select(R, 0, batch.idx_j) - torch.index_select(R, 0, batch.idx_i)  # [n_pairs, 3]
        d = torch.linalg.vector_norm(vec, dim=1)  # [n_pairs]
        rbf = self.rbf(d)  # [n_pairs, n_rbf]
        fcut = self.cutoff(d) if self.cutoff is not None else None  # [n_pairs]
        x = self.embedding(batch.Z)  # [n_atoms, n_atom_basis]
        for block in self.interactions:
            x = block(x, rbf, fcut, batch.idx_i, batch.idx_j)
        return self.output(x).squeeze(-1)  # [n_atoms]

    def forward(self, batch: Batch, forces: bool = True, create_graph: bool = False) -> Prediction:
        """Energies (and forces) of a batch.

        Args:
            batch: molecules; positions in Å.
            forces: compute ``F = −∂E/∂R`` (works in ``torch.no_grad`` callers too).
            create_graph: keep the force graph for a loss on forces (training).

        Positions that require grad (a caller differentiating through R, e.g. for Hessians)
        take the plain autograd path (:meth:`atomwise`); otherwise the fast path, with the same
        numerics (``tests/test_numerics.py``), computes filters and their distance derivatives
        once per call (:mod:`schnet_model.nn.filters`).
        """
        if batch.R.requires_grad:
            return self._forward_autograd(batch, forces, create_graph)
        return self._forward_fast(batch, forces, create_graph)

    def _forward_autograd(self, batch: Batch, forces: bool, create_graph: bool) -> Prediction:
        with torch.set_grad_enabled(forces or torch.is_grad_enabled()):
            R = batch.R
            if forces and not R.requires_grad:
                R = R.detach().requires_grad_(True)
            y = self.atomwise(batch, R)
            energy = self.offsets(y, batch.Z, batch.mol, batch.n_mols)  # [n_mols] float64
            if not forces:
                return Prediction(energy=energy, forces=None)
            (grad,) = torch.autograd.grad(energy.sum(), R, create_graph=create_graph)
        return Prediction(energy=energy if create_graph else energy.detach(), forces=-grad)

    def _filter_params(self) -> tuple[torch.Tensor, ...]:
        return tuple(
            p
            for block in self.interactions
            for p in (block.filter_net[0][0].weight, block.filter_net[0][0].bias,
                      block.filter_net[1].weight, block.filter_net[1].bias)
        )

    def _forward_fast(self, batch: Batch, forces: bool, create_graph: bool) -> Prediction:
        """Filters once per call, cfconv on unordered pairs, forces from an explicit backward.

        ``∂E/∂(atom features)`` is written out (the network is a chain of dense layers, ssp and
        cfconvs), so forces are an ordinary differentiable function of the parameters and a
        training step backpropagates once through it (no double backward):
        ``∂E/∂d_p = Σ_t ⟨∂E/∂W_t,p, W_t'(d_p)⟩`` with ``∂E/∂W_t,p = outer(∂E/∂m_t, h_t)_p``.
        """
        param_grads = torch.is_grad_enabled()  # the caller may backpropagate to the parameters
        dtype = self.embedding.weight.dtype
        pi, pj, n_dir = unordered_pairs(batch.idx_i, batch.idx_j, batch.R.shape[0])
        if n_dir != 2:  # not a symmetric pair list: plain autograd
            return self._forward_autograd(batch, forces, create_graph)
        compiled = self._fast_calls >= COMPILE_AFTER
        self._fast_calls += 1
        with torch.no_grad():
            R = batch.R.to(dtype)
            vec = torch.index_select(R, 0, pj) - torch.index_select(R, 0, pi)  # [n_pairs, 3]
            d, order = torch.sort(torch.linalg.vector_norm(vec, dim=1))
            pi, pj, vec = pi[order], pj[order], vec[order]
            fc = fcd = None
            if self.cutoff is not None:
                inside = int((d < self.cutoff.cutoff).sum())  # beyond the cutoff filters are 0
                d, pi, pj, vec = d[:inside], pi[:inside], pj[:inside], vec[:inside]
                fc, fcd = self.cutoff.with_derivative(d)
            plan = make_plan(d, self.rbf, fc, fcd, compiled=compiled)
            unit = vec / d[:, None]  # [n_pairs, 3]
        params = self._filter_params()
        track = param_grads and (create_graph or not forces)  # an autograd graph to the parameters
        with torch.set_grad_enabled(track):
            if track:
                out = FilterBank.apply(plan, forces, *params)
                w, wd = list(out[: len(self.interactions)]), list(out[len(self.interactions):])
            else:
                w, wd, _ = filter_forward(plan, forces, params, save=False)
            layers = [(b.in2f.weight, b.f2out[0][0].weight, b.f2out[0][0].bias, b.f2out[1].weight, b.f2out[1].bias)
                      for b in self.interactions]
            head = (self.output[0][0].weight, self.output[0][0].bias, self.output[1].weight, self.output[1].bias)
            y, f = atomwise(compiled, self.embedding(batch.Z), w, wd, pi, pj, unit, layers, head,
                            self.offsets.scale.to(dtype), forces)
            energy = self.offsets(y, batch.Z, batch.mol, batch.n_mols)  # [n_mols] float64
            if not forces:
                return Prediction(energy=energy, forces=None)
        if not create_graph:
            energy, f = energy.detach(), f.detach()
        return Prediction(energy=energy, forces=f.to(batch.R.dtype))

    def n_parameters(self) -> int:
        """Trainable parameter count (116,033 for the paper configuration)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
