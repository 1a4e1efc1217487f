"""Shifted softplus, the SchNet nonlinearity."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LN2 = math.log(2.0)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``ssp(x) = ln(0.5·eˣ + 0.5) = softplus(x) − ln 2``.

    Computed through ``torch.nn.functional.softplus`` (linear above x = 20, ``log1p(exp(x))``
    below), never through ``exp(x)`` directly, so values and gradients stay finite for
    |x| up to float32's range (the NaN of a naive ``log(0.5*exp(x)+0.5)`` at x ≳ 89).
    """
    return F.softplus(x) - LN2


class ShiftedSoftplus(nn.Module):
    """Module wrapper of :func:`shifted_softplus`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)
