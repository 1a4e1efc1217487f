"""SchNet (Schütt et al. 2017): energies and forces of molecules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from schnet_model.config import ModelConfig
from schnet_model.data.batch import Batch
from schnet_model.nn.interaction import Interaction, dense
from schnet_model.nn.offsets import EnergyOffsets
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
        """
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

    def n_parameters(self) -> int:
        """Trainable parameter count (116,033 for the paper configuration)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
