"""The parameters of a SchNet interaction block (the computation is in :mod:`schnet_model.nn.core`)."""

from __future__ import annotations

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
    """``x ← x + v`` with ``v = f2out(cfconv(in2f(x)))``: the layers, as state-dict entries.

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
