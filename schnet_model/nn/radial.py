"""Radial basis expansion of distances and the cosine cutoff."""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianRBF(nn.Module):
    """Gaussians ``exp(−γ (d − μ_k)²)`` on centres ``μ_k = k·spacing``, k = 0..n_rbf−1.

    Paper default: spacing 0.1 Å, 300 centres (0 … 29.9 Å), γ = 10 Å⁻².

    Args:
        n_rbf: number of centres.
        spacing: distance between centres in Å.
        gamma: width γ in Å⁻².
    """

    def __init__(self, n_rbf: int = 300, spacing: float = 0.1, gamma: float = 10.0) -> None:
        super().__init__()
        self.n_rbf = n_rbf
        self.gamma = gamma
        self.register_buffer("centers", torch.arange(n_rbf, dtype=torch.float32) * spacing)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """d: [n_pairs] → [n_pairs, n_rbf]."""
        diff = d[:, None] - self.centers.to(d.dtype)  # [n_pairs, n_rbf]
        return torch.exp(-self.gamma * diff * diff)


class CosineCutoff(nn.Module):
    """``0.5·(cos(π d / r_c) + 1)`` for d < r_c, 0 beyond. This is where the cutoff is applied.

    Args:
        cutoff: r_c in Å.
    """

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """d: [n_pairs] → [n_pairs]."""
        f = 0.5 * (torch.cos(d * (math.pi / self.cutoff)) + 1.0)
        return f * (d < self.cutoff).to(d.dtype)
