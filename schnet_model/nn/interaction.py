"""The SchNet interaction block: continuous-filter convolution plus atom-wise layers."""

from __future__ import annotations

import torch
from torch import nn

from schnet_model.nn.activations import ShiftedSoftplus


def dense(n_in: int, n_out: int, activation: bool = False, bias: bool = True) -> nn.Module:
    """A linear layer, optionally followed by shifted softplus (Xavier-uniform weights, zero bias)."""
    lin = nn.Linear(n_in, n_out, bias=bias)
    nn.init.xavier_uniform_(lin.weight)
    if bias:
        nn.init.zeros_(lin.bias)
    return nn.Sequential(lin, ShiftedSoftplus()) if activation else lin


class Interaction(nn.Module):
    """``x ← x + v`` with ``v = f2out(cfconv(in2f(x)))``.

    - in2f: atom-wise, n_atom_basis → n_filters, no bias
    - cfconv: filter ``W_ij = Dense(F,F)(ssp(Dense(n_rbf,F)(rbf_ij))) · cutoff_ij``; message
      ``h_j ⊙ W_ij`` summed over neighbours j of i (no normalisation)
    - f2out: atom-wise n_filters → n_atom_basis with ssp, then atom-wise n_atom_basis → n_atom_basis

    Args:
        n_atom_basis: atom feature size.
        n_filters: filter size.
        n_rbf: radial basis size.
    """

    def __init__(self, n_atom_basis: int, n_filters: int, n_rbf: int) -> None:
        super().__init__()
        self.in2f = dense(n_atom_basis, n_filters, bias=False)
        self.filter_net = nn.Sequential(dense(n_rbf, n_filters, activation=True), dense(n_filters, n_filters))
        self.f2out = nn.Sequential(
            dense(n_filters, n_atom_basis, activation=True), dense(n_atom_basis, n_atom_basis)
        )

    def forward(
        self,
        x: torch.Tensor,  # [n_atoms, n_atom_basis]
        rbf: torch.Tensor,  # [n_pairs, n_rbf]
        fcut: torch.Tensor | None,  # [n_pairs] or None (no cutoff)
        idx_i: torch.Tensor,  # [n_pairs]
        idx_j: torch.Tensor,  # [n_pairs]
    ) -> torch.Tensor:
        h = self.in2f(x)  # [n_atoms, n_filters]
        w = self.filter_net(rbf)  # [n_pairs, n_filters]
        if fcut is not None:
            w = w * fcut[:, None]
        msg = torch.index_select(h, 0, idx_j) * w  # [n_pairs, n_filters]
        conv = torch.zeros_like(h).index_add_(0, idx_i, msg)  # [n_atoms, n_filters]
        return x + self.f2out(conv)
