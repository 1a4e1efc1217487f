"""Recalibration of ensemble standard deviations, and calibration metrics.

Conventions: ``std`` is the ensemble's sample standard deviation over its k members with
``ddof = STD_DDOF = 1`` (see :mod:`schnet_model.ensemble`); an error is ``prediction − reference``
of the ensemble **mean**; a calibrated ``σ = scale · std`` is read as the standard deviation of
a zero-mean Gaussian error.

Fitting the scale from k-fold out-of-fold predictions (:func:`fit_scale_oof`)
--------------------------------------------------------------------------------
Every non-test ("pool") sample i was held out by exactly one member m(i); its error
``e_i = y_m(i)(x_i) − y_i`` is an honest held-out error, but of one member, not of the ensemble
mean. The ensemble std at a pool sample is *not* usable: k−1 members trained on x_i and agree,
the held-out one differs by ≈ e_i, so ``std_i ≈ |e_i|/√k`` — a function of the very error it
should predict, and a scale fitted against it would be ≈ √k whatever the data. Instead, for any
input the exact identity (``ddof = 1``)

    mean_j (y_j − y)² = (ȳ − y)² + (k−1)/k · std²

links member errors, ensemble-mean error and ensemble spread. Averaged over the data
distribution, ``E[(ȳ − y)²] = E_member[e²] − (k−1)/k · E[std²]``. The held-out member MSE is
estimated without bias by the out-of-fold MSE (member m on fold m is as held out as on the test
set), and ``E[std²]`` by the ensemble variance on held-out *inputs* (positions only — the test
set's labels are never used). Matching ``E[σ²] = E[(ȳ − y)²]`` for ``σ = a · std`` gives

    a² = MSE_oof / mean(std²) − (k−1)/k,

one scale per property (energies per molecule; force components pooled over atoms). It is a
moment (RMS) calibration: the root-mean σ equals the expected RMSE of the ensemble mean.

The scale has a floor of ``1/√k``. Write each member's error as a part shared by all members plus an
independent part of variance ``E[std²]``: the ensemble mean keeps the shared part and ``1/k`` of the
rest, so ``a² = (shared variance)/E[std²] + 1/k ≥ 1/k``. An estimate below it says the held-out inputs
are not drawn like the pool (e.g. another trajectory, where the members disagree more than on the
pool): their spread cannot be matched to the out-of-fold errors, and the fit reports ``floored``.
:func:`fit_scale` is the pointwise maximum-likelihood scale, ``a² = mean(e²/std²)``, for when
honest pairs (ensemble error, ensemble std) are available, e.g. a user's labelled file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

PROPERTIES = ("energy", "forces")
MIN_STD = 1e-12  # std values are floored here in metrics (a zero std with a non-zero error is infinitely surprising)


# -- the stored recalibration --------------------------------------------------------------------
@dataclass
class Calibration:
    """Scale factors ``σ = scale · std`` per property, with how they were obtained.

    Attributes:
        energy_scale: factor for molecule energy stds.
        forces_scale: factor for force-component stds (and their norms and summaries).
        method: how the factors were fitted (``"identity"`` = not calibrated).
        details: numbers behind the fit (sample counts, MSEs, mean variances), JSON-serialisable.
    """

    energy_scale: float = 1.0
    forces_scale: float = 1.0
    method: str = "identity"
    details: dict[str, Any] = field(default_factory=dict)

    def scale(self, prop: str) -> float:
        """The factor for ``'energy'`` or ``'forces'``."""
        if prop not in PROPERTIES:
            raise ValueError(f"unknown property {prop!r}; expected one of {PROPERTIES}")
        return self.energy_scale if prop == "energy" else self.forces_scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(float(d.get("energy_scale", 1.0)), float(d.get("forces_scale", 1.0)),
                   str(d.get("method", "identity")), dict(d.get("details", {})))


def fit_scale(error: np.ndarray, std: np.ndarray) -> float:
    """Maximum-likelihood ``a`` for ``error ~ N(0, (a·std)²)``: ``a² = mean(error² / std²)``.

    Args:
        error: [n] ensemble-mean errors (any shape; flattened).
        std: [n] ensemble stds, same shape.
    """
    e, s = np.ravel(error).astype(np.float64), np.maximum(np.ravel(std).astype(np.float64), MIN_STD)
    if e.shape != s.shape or not len(e):
        raise ValueError(f"fit_scale: {e.shape} errors and {s.shape} stds")
    return float(np.sqrt(np.mean((e / s) ** 2)))


def fit_scale_oof(oof_member_error: np.ndarray, heldout_std: np.ndarray, k: int,
                  min_scale: float | None = None) -> tuple[float, dict[str, float]]:
    """Scale from out-of-fold member errors and ensemble stds on held-out inputs (see module docstring).

    Args:
        oof_member_error: [n_pool] (or [n_pool_atoms, 3]) errors of the member that did not train on each sample.
        heldout_std: [n_u] (or [n_u_atoms, 3]) ensemble stds (ddof=1) on inputs no member trained on.
        k: ensemble size.
        min_scale: floor for the scale; default ``1/√k``, the least the variance decomposition allows.

    Returns:
        (scale, details) with ``mse_oof``, ``mean_var``, ``a2_raw``, ``floor``, ``floored`` (the raw estimate
        fell below the floor) and counts.
    """
    if k < 2:
        raise ValueError(f"an ensemble std needs k ≥ 2 members, got {k}")
    floor = 1.0 / math.sqrt(k) if min_scale is None else float(min_scale)
    mse = float(np.mean(np.square(np.asarray(oof_member_error, dtype=np.float64))))
    var = float(np.mean(np.square(np.asarray(heldout_std, dtype=np.float64))))
    if not (np.isfinite(mse) and np.isfinite(var)) or var <= 0:
        return 1.0, {"mse_oof": mse, "mean_var": var, "a2_raw": float("nan"), "k": k, "floor": floor,
                     "floored": False}
    a2 = mse / var - (k - 1) / k
    return float(max(math.sqrt(max(a2, 0.0)), floor)), {
        "mse_oof": mse, "mean_var": var, "a2_raw": a2, "k": k, "floor": floor, "floored": bool(a2 < floor**2),
        "n_oof": int(np.size(oof_member_error)), "n_heldout": int(np.size(heldout_std))}


# -- metrics -------------------------------------------------------------------------------------
def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties averaged (as ``scipy.stats.rankdata``)."""
    x = np.ravel(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.concatenate([[True], xs[1:] != xs[:-1]])
    group = np.cumsum(first) - 1  # [n] tie-group of each sorted element
    starts = np.flatnonzero(first)
    ends = np.concatenate([starts[1:], [len(x)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = avg[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation ρ (NaN when either input is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def reliability(error: np.ndarray, sigma: np.ndarray,
                levels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expected vs observed coverage of central Gaussian intervals ±z_p·σ.

    Returns:
        (expected [n_levels], observed [n_levels]): observed = fraction of |error| ≤ z_p σ with
        z_p the (1+p)/2 normal quantile.
    """
    p = np.linspace(0.01, 0.99, 99) if levels is None else np.asarray(levels, dtype=np.float64)
    z = np.array([NormalDist().inv_cdf((1 + q) / 2) for q in p])  # [n_levels]
    r = np.sort(np.abs(np.ravel(error)) / np.maximum(np.ravel(sigma), MIN_STD))  # [n] sorted |e|/σ
    observed = np.searchsorted(r, z, side="right") / len(r)
    return p, observed


def miscalibration_area(error: np.ndarray, sigma: np.ndarray) -> float:
    """Mean |observed − expected| coverage over p = 0.01 … 0.99 (0 = calibrated, 0.5 = worst)."""
    p, obs = reliability(error, sigma)
    return float(np.mean(np.abs(obs - p)))


def gaussian_nll(error: np.ndarray, sigma: np.ndarray) -> float:
    """Mean Gaussian negative log-likelihood ``½ log(2πσ²) + e²/(2σ²)`` (in nats, σ in the error's unit)."""
    e, s = np.ravel(error).astype(np.float64), np.maximum(np.ravel(sigma).astype(np.float64), MIN_STD)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + 0.5 * (e / s) ** 2))


def calibration_metrics(error: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """Spearman ρ(σ, |e|), miscalibration area, Gaussian NLL, RMSE, RMV (root mean σ²), 68/95 % coverage, n."""
    e, s = np.ravel(error).astype(np.float64), np.ravel(sigma).astype(np.float64)
    p, obs = reliability(e, s, np.array([0.6827, 0.9545]))
    return {
        "spearman": spearman(s, np.abs(e)),
        "miscal_area": miscalibration_area(e, s),
        "nll": gaussian_nll(e, s),
        "rmse": float(np.sqrt(np.mean(e**2))),
        "rmv": float(np.sqrt(np.mean(s**2))),
        "coverage68": float(obs[0]),
        "coverage95": float(obs[1]),
        "n": float(len(e)),
    }


__all__ = ["Calibration", "calibration_metrics", "fit_scale", "fit_scale_oof", "gaussian_nll", "miscalibration_area",
           "rankdata", "reliability", "spearman"]
