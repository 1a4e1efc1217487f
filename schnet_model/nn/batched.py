"""Dense layers with a leading member axis: one batched product for k members (both families' networks)."""

from __future__ import annotations

import torch


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` per member: a [k, n, i], b [k, i, o] → [k, n, o] (one plain product when k = 1)."""
    return torch.bmm(a, b) if a.shape[0] != 1 else torch.mm(a[0], b[0]).unsqueeze(0)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ wᵀ + b`` per member: x [k, n, in], w [k, out, in], b [k, out] → [k, n, out]."""
    if b is None:
        return bmm(x, w.transpose(1, 2))
    if x.shape[0] == 1:
        return torch.addmm(b[0], x[0], w[0].t()).unsqueeze(0)
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


__all__ = ["bmm", "linear"]
