"""SchNet (Schütt et al. 2017): energies and forces of molecules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from schnet_model.config import ModelConfig
from schnet_model.data.batch import Batch
from schnet_model.nn.compiled import COMPILE_AFTER, compile_now
from schnet_model.nn.core import FilterPath, Graph, Params, energies_forces
from schnet_model.nn.interaction import Interaction, dense
from schnet_model.nn.offsets import EnergyOffsets
from schnet_model.nn.pairs import unordered_pairs
from schnet_model.nn.radial import GaussianRBF


@dataclass(frozen=True)
class Prediction:
    """Model output for a batch."""

    energy: torch.Tensor  # [n_mols] float64
    forces: torch.Tensor | None  # [n_atoms, 3], dtype of the positions


def filter_path(device: torch.device) -> FilterPath:
    """The filter path for a device: windowed on CPU (fewer FLOPs), dense elsewhere (no host sync)."""
    return "windowed" if device.type == "cpu" else "dense"


class SchNet(nn.Module):
    """SchNet with an atom-wise energy head and forces ``F = −∂E/∂R``.

    Embedding (``max_z`` rows, Z < max_z) → ``n_interactions`` × :class:`Interaction` →
    atom-wise MLP n_atom_basis → n_output_hidden (ssp) → 1 → energy offsets (float64) → sum
    per molecule. The modules hold the parameters (and define the state-dict layout); the
    computation is the core's (:func:`schnet_model.nn.core.energies_forces`) with k = 1.

    Args:
        config: architecture hyperparameters (paper defaults, see :class:`ModelConfig`).
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        self.embedding = nn.Embedding(config.max_z, config.n_atom_basis, padding_idx=0)
        self.rbf = GaussianRBF(config.n_rbf, config.rbf_spacing, config.gamma)
        self.interactions = nn.ModuleList(
            Interaction(config.n_atom_basis, config.n_filters, config.n_rbf)
            for _ in range(config.n_interactions)
        )
        hidden = config.n_output_hidden or max(1, config.n_atom_basis // 2)
        self.output = nn.Sequential(dense(config.n_atom_basis, hidden, activation=True), dense(hidden, 1))
        self.offsets = EnergyOffsets(config.max_z)
        self._fast_calls = 0  # explicit-path calls so far
        self.compile_after: int | None = COMPILE_AFTER  # CPU kernels compiled after this many calls (None: never)

    def stacked(self) -> Params:
        """The parameters and energy offsets as core :data:`Params` with k = 1 (views, gradients flow)."""
        if getattr(self, "_slots", None) is None:  # (name, owning module, attribute), found once
            self._slots = [(name, self.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
                           for name in self.state_dict() if name != "rbf.centers"]
        return {name: getattr(mod, attr).unsqueeze(0) for name, mod, attr in self._slots}

    def forward(self, batch: Batch, forces: bool = True, create_graph: bool = False) -> Prediction:
        """Energies (and forces) of a batch.

        Args:
            batch: molecules; positions in Å.
            forces: compute ``F = −∂E/∂R`` (works in ``torch.no_grad`` callers too).
            create_graph: keep the force graph for a loss on forces (training).

        A symmetric pair list is halved to unordered pairs and forces come from the explicit
        backward (filters windowed on CPU, dense elsewhere); positions that require grad (a
        caller differentiating through R, e.g. for Hessians) or a one-directional pair list take
        forces by autograd. Both agree with the dense reference (``tests/test_numerics.py``).
        """
        pi, pj, n_dir = unordered_pairs(batch.idx_i, batch.idx_j, batch.R.shape[0])
        graph = Graph(batch.Z[None], batch.R[None], batch.mol[None], batch.n_mols, pi[None], pj[None],
                      directed=n_dir != 2)
        compiled = False
        if not (batch.R.requires_grad or graph.directed):
            compiled = compile_now(self._fast_calls, self.compile_after, batch.R.device, "SchNet")
            self._fast_calls += 1
        E, F = energies_forces(self.stacked(), self.config, graph, forces, create_graph,
                               filters=filter_path(batch.R.device), compiled=compiled)
        return Prediction(energy=E[0], forces=None if F is None else F[0].to(batch.R.dtype))

    def n_parameters(self) -> int:
        """Trainable parameter count (116,033 for the paper configuration)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
