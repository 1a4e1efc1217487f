"""Radial basis expansion of distances, its truncation window, and the cosine cutoff."""

from __future__ import annotations

import math

import torch
from torch import nn


def truncation_radius(gamma: float, dtype: torch.dtype) -> float:
    """Distance r (Å) beyond which a Gaussian ``exp(−γ r²)`` is dropped by the fast path.

    The fast filter (:mod:`schnet_model.nn.filters`) multiplies only the Gaussians whose centre lies
    within ``r`` of the distance. Each dropped value is ``≤ τ = eps(dtype)·2⁻¹⁰`` (1.2e-10 in
    float32, 2.2e-19 in float64), and the dropped tail is geometric with ratio ``exp(−2γ r Δ)``
    (≤ 0.05 for the paper's γ = 10 Å⁻², Δ = 0.1 Å), so the first filter layer's pre-activation
    changes by at most ``≈ 2.1·τ·max|W₁|``, about a thousandth of one unit in the last place of
    the result; its distance derivative (``2γ r`` times larger per term, against a derivative
    ``≈ √(2γ)`` times larger than the value) by ``≈ 1e-9`` relative in float32. γ = 10: r = 1.51 Å
    (float32), 2.07 Å (float64), i.e. ≈ 31 (42) of the 300 Gaussians per distance.
    """
    tau = torch.finfo(dtype).eps * 2.0**-10
    return math.sqrt(math.log(1.0 / tau) / gamma)


def rbf_centers(n_rbf: int, spacing: float, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Gaussian centres ``μ_k = k·spacing``, k = 0..n_rbf−1, computed in ``dtype`` ([n_rbf]; the float32
    buffer cast up to float64 would be off by up to 1e-6 Å)."""
    return torch.arange(n_rbf, dtype=dtype, device=device) * spacing


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
        self.spacing = spacing
        self.gamma = gamma
        self.register_buffer("centers", rbf_centers(n_rbf, spacing))

    def centers_as(self, d: torch.Tensor) -> torch.Tensor:
        """:func:`rbf_centers` in d's dtype, on d's device."""
        return rbf_centers(self.n_rbf, self.spacing, d.dtype, d.device)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """d: [n_pairs] → [n_pairs, n_rbf] (all centres, no truncation)."""
        diff = d[:, None] - self.centers_as(d)  # [n_pairs, n_rbf]
        return torch.exp(-self.gamma * diff * diff)

    def window(self, d_lo: float, d_hi: float, dtype: torch.dtype) -> tuple[int, int]:
        """:func:`gaussian_window` of this basis."""
        return gaussian_window(d_lo, d_hi, dtype, self.gamma, self.spacing, self.n_rbf)


def gaussian_window(d_lo: float, d_hi: float, dtype: torch.dtype, gamma: float, spacing: float,
                    n_rbf: int) -> tuple[int, int]:
    """Centre range ``[k0, k1)`` holding every Gaussian that matters for distances in [d_lo, d_hi].

    Centres farther than :func:`truncation_radius` from every distance in the range are left
    out (the one truncation of the windowed filters; see there for the bound).
    """
    r = truncation_radius(gamma, dtype)
    k0 = max(0, math.floor((d_lo - r) / spacing))
    k1 = min(n_rbf, math.ceil((d_hi + r) / spacing) + 1)
    return k0, max(k0, k1)


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(d), f'(d)) of ``0.5·(cos(π d / r_c) + 1)`` for d < r_c, 0 beyond; shapes of d.

    This is where the cutoff is applied (both filter paths multiply their filters by it).
    """
    inside = (d < cutoff).to(d.dtype)
    arg = d * (math.pi / cutoff)
    return 0.5 * (torch.cos(arg) + 1.0) * inside, (-0.5 * math.pi / cutoff) * torch.sin(arg) * inside
