"""``sweep select``: which candidate molecules to label next, by calibrated uncertainty with diversity.

Candidates are ASE ``Atoms`` (frames of the ensemble's own MD, :mod:`schnet_model.explore`, or a
user's file) scored by the ensemble's recalibrated uncertainty: the largest per-atom force std
``forces_std_max = max_a sqrt(σx² + σy² + σz²)`` (eV/Å), the quantity DP-GEN's model deviation and
``examples/md_uncertainty.py`` use.

``uncertainty`` (the default) first leaves out candidates above ``max_score`` (DP-GEN's upper trust
level: the frame at which an exploration run crossed its threshold is usually a geometry the reference
would never visit at that temperature, and labelling it teaches the model about the wrong region),
then keeps the ``pool_factor·N`` most uncertain of the rest (β = 3) and runs Zhdanov's weighted
k-means ("diverse mini-batch active learning", 2019) on them: N clusters in a structural descriptor
space (standardised inverse interatomic distances when all candidates are the same molecule, else
sorted Coulomb-matrix eigenvalues), each candidate weighted by its uncertainty, and from each cluster
the candidate nearest its centre. The centres sit where the pool is both dense and uncertain, and the
candidate nearest a centre is a typical member of that region, not its most strained outlier (taking
the most uncertain of each cluster chose the tail of the exploration and lost to random choice:
docs/active_learning.md). N near-duplicates from one stretch of one trajectory cannot all be chosen.
``pool_factor`` (β) sets how far into the uncertain end the clusters reach: β = 1 is the N most uncertain.
``stochastic`` draws N of the candidates below ``max_score`` without replacement with probability ∝ σ²
(power acquisition, Kirsch et al. 2023): tilted towards the uncertain, but matched to the density of the
pool where k-means spreads its centres out. ``random`` draws N uniformly (the control of the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms

from schnet_model.data.molecules import DataError, Molecules
from schnet_model.ensemble import Ensemble

Strategy = Literal["uncertainty", "stochastic", "random"]
STRATEGIES: tuple[str, ...] = ("uncertainty", "stochastic", "random")
# the uncertainty strategy clusters the POOL_FACTOR·N most uncertain candidates (Zhdanov 2019's β). Zhdanov's 10 is for
# pools of thousands; on an exploration pool of a few hundred, 10·N is half of it and the choice follows the pool's own
# make-up (from a 500–1,000 K ladder it took as many 500 K frames as random did): β = 3 is the one measured to beat
# random (docs/active_learning.md)
POOL_FACTOR = 3


class SelectError(ValueError):
    """Bad selection input (one line, names the file or option)."""


@dataclass
class Scored:
    """Candidates with the ensemble's prediction (eV, eV/Å; stds recalibrated)."""

    frames: list[Atoms]
    energy: np.ndarray  # [n] eV
    energy_std: np.ndarray  # [n] eV
    forces: list[np.ndarray]  # n × [n_atoms, 3] eV/Å
    forces_std_norm: list[np.ndarray]  # n × [n_atoms] eV/Å
    score: np.ndarray  # [n] forces_std_max, eV/Å


def score(ens: Ensemble, frames: list[Atoms]) -> Scored:
    """The ensemble's calibrated prediction for every frame (positions in Å)."""
    if not frames:
        raise SelectError("no candidate molecules to select from")
    ens.check_elements(np.concatenate([a.numbers for a in frames]), "candidates")
    ptr = np.concatenate([[0], np.cumsum([len(a) for a in frames])])
    mols = Molecules(Z=np.concatenate([a.numbers for a in frames]), R=np.concatenate([a.positions for a in frames]),
                     atom_ptr=ptr, E=None, F=None, energy_unit=ens.energy_unit, name="candidates")
    p = ens.predict(mols).to_unit("eV")
    split = ptr[1:-1]
    return Scored(frames, p.energy, p.energy_std, np.split(p.forces, split), np.split(p.forces_std_norm, split),
                  np.asarray(p.forces_std_max))


def descriptors(frames: list[Atoms]) -> np.ndarray:
    """[n, d] structural descriptors: inverse pair distances (1/Å) for one molecule, else Coulomb eigenvalues."""
    same = all(len(a) == len(frames[0]) and np.array_equal(a.numbers, frames[0].numbers) for a in frames)
    if same:
        i, j = np.triu_indices(len(frames[0]), 1)
        R = np.stack([a.positions for a in frames])  # [n, n_atoms, 3]
        return 1.0 / np.linalg.norm(R[:, i] - R[:, j], axis=-1)  # [n, n_pairs]
    width = max(len(a) for a in frames)
    out = np.zeros((len(frames), width))
    for k, a in enumerate(frames):
        z = a.numbers.astype(float)
        d = np.linalg.norm(a.positions[:, None] - a.positions[None], axis=-1)
        np.fill_diagonal(d, 1.0)
        cm = np.outer(z, z) / d
        np.fill_diagonal(cm, 0.5 * z**2.4)
        out[k, : len(a)] = np.sort(np.linalg.eigvalsh(cm))[::-1]
    return out


def choose(scores: np.ndarray, desc: np.ndarray, n: int, strategy: Strategy, *, seed: int = 0,
           pool_factor: int = POOL_FACTOR, max_score: float | None = None) -> np.ndarray:
    """Indices of the ``n`` candidates to label, most uncertain first (``random``: in the order drawn).

    ``max_score``: the upper trust level of ``uncertainty`` and ``stochastic`` (candidates above it are taken only when
    fewer than ``n`` lie below it, least uncertain first); ``random`` ignores it (the naive control).
    """
    if n < 1:
        raise SelectError(f"select at least one molecule (got {n})")
    if n > len(scores):
        raise SelectError(f"cannot select {n} molecules from {len(scores)} candidates")
    if pool_factor < 1:
        raise SelectError(f"--pool-factor: must be ≥ 1 (got {pool_factor})")
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.choice(len(scores), n, replace=False)
    if strategy not in ("uncertainty", "stochastic"):
        raise SelectError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    order = np.argsort(-scores, kind="stable")  # most uncertain first
    if max_score is not None:
        trusted = order[scores[order] <= max_score]
        if len(trusted) < n:  # too few below the trust level: the least uncertain above it complete the choice
            return np.concatenate([trusted, order[scores[order] > max_score][::-1][: n - len(trusted)]])
        order = trusted
    if strategy == "stochastic":  # N draws without replacement, p ∝ σ² (a calibrated ensemble's expected squared error)
        w = scores[order].astype(float) ** 2 + 1e-12  # [m]; the floor keeps zero-std candidates drawable
        drawn = rng.choice(order, n, replace=False, p=w / w.sum())
        return np.array(sorted(drawn.tolist(), key=lambda i: -scores[i]))
    top = order[: max(n, pool_factor * n)]  # [m]
    if len(top) == n:
        return top
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    x = desc[top]  # [m, d]
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    with warnings.catch_warnings():  # fewer distinct candidates than clusters: the fill below completes the choice
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n, init="k-means++", n_init=4, random_state=seed).fit(x, sample_weight=scores[top])
    dist = km.transform(x)  # [m, n] distance of every candidate to every centre
    picked: list[int] = []
    for c in range(n):
        members = np.flatnonzero(km.labels_ == c)
        if members.size:  # the candidate nearest the (uncertainty-weighted) centre
            picked.append(int(top[members[np.argmin(dist[members, c])]]))
    for i in top:  # empty clusters: the next most uncertain not yet chosen
        if len(picked) == n:
            break
        if int(i) not in picked:
            picked.append(int(i))
    return np.array(sorted(picked, key=lambda i: -scores[i]))


def selected_frames(scored: Scored, idx: np.ndarray, strategy: str) -> list[Atoms]:
    """The chosen frames with their predictions (``*_pred``, eV and eV/Å: not labels) and provenance in ``info``."""
    out = []
    for rank, i in enumerate(idx):
        src = scored.frames[i]
        a = Atoms(numbers=src.numbers, positions=src.positions)
        a.info.update({k: v for k, v in src.info.items() if k in ("trajectory", "step", "time_fs", "temperature_K",
                                                                     "thermostat_K")})
        a.info.update(candidate=int(i), rank=rank, strategy=strategy, energy_pred=float(scored.energy[i]),
                      energy_std=float(scored.energy_std[i]), forces_std_max=float(scored.score[i]), energy_unit="eV")
        a.arrays["forces_pred"] = scored.forces[i]
        a.arrays["forces_std_norm"] = scored.forces_std_norm[i]
        out.append(a)
    return out


@dataclass
class Selection:
    """What one selection chose and from what."""

    scored: Scored
    idx: np.ndarray  # [n] chosen candidates, in order of selection
    chosen: list[Atoms]  # their frames with predictions (:func:`selected_frames`)

    def stats(self) -> dict[str, float]:
        """Candidates and the median calibrated max force std (eV/Å) of all candidates and of the chosen ones; for
        frames of exploration MD at several temperatures, how many of each were candidates and chosen
        (``candidates_1000K``, ``selected_1000K``)."""
        out = {"candidates": len(self.scored.frames), "selected": len(self.idx),
               "candidates_forces_std_max_median": float(np.median(self.scored.score)),
               "selected_forces_std_max_median": float(np.median(self.scored.score[self.idx]))}
        thermostat = [f.info.get("thermostat_K") for f in self.scored.frames]
        if None not in thermostat and len(set(thermostat)) > 1:
            for t in sorted(set(thermostat)):
                out[f"candidates_{t:g}K"] = sum(x == t for x in thermostat)
                out[f"selected_{t:g}K"] = sum(thermostat[i] == t for i in self.idx)
        return out


def select(ens: Ensemble, frames: list[Atoms], n: int, strategy: Strategy, *, seed: int = 0,
           max_score: float | None = None, pool_factor: int = POOL_FACTOR) -> Selection:
    """Score ``frames`` with ``ens`` and choose ``n`` of them (:func:`choose`): what ``sweep select`` and every round of
    ``sweep learn`` do."""
    scored = score(ens, frames)
    idx = choose(scored.score, descriptors(frames), n, strategy, seed=seed, pool_factor=pool_factor,
                 max_score=max_score)
    return Selection(scored, idx, selected_frames(scored, idx, strategy))


def parse_threshold(text: str | float) -> tuple[float, bool]:
    """An exploration threshold: ``"1.0"`` → (1.0, False), eV/Å; ``"4x"`` → (4.0, True), times the ensemble's median
    max per-atom force std on the geometries the runs start from (:func:`threshold_eV`)."""
    t = str(text).strip()
    relative = t.lower().endswith("x")
    try:
        value = float(t[:-1] if relative else t)
    except ValueError:
        raise SelectError(f"--threshold: {text!r}; expected eV/Å (e.g. 1.0) or a multiple of the ensemble's median "
                          "force std on the start geometries (e.g. 4x)") from None
    if not value > 0:
        raise SelectError(f"--threshold: {text!r}; must be > 0")
    return value, relative


def parse_temperatures(value: float | list[float] | tuple[float, ...]) -> list[float]:
    """Exploration temperatures (K): one, or a ladder shared out over the MD runs in turn."""
    temps = [value] if isinstance(value, (int, float)) else list(value)
    if not temps:
        raise SelectError("--temperature: give at least one temperature (K)")
    for t in temps:
        if not (isinstance(t, (int, float)) and float(t) > 0):
            raise SelectError(f"--temperature: {t!r}; expected a temperature in K > 0")
    return [float(t) for t in temps]


def kelvin(temps: list[float]) -> str:
    """``[500.0, 1000.0]`` → ``"500, 1000 K"``."""
    return ", ".join(f"{t:g}" for t in temps) + " K"


def threshold_eV(text: str | float, ens: Ensemble, reference: list[Atoms]) -> float:
    """The threshold in eV/Å. Relative (``"4x"``): 4 × the median calibrated max force std over ``reference`` (the
    data the runs start from), so that it follows the ensemble: a recalibration that doubles every std, or models
    that have become more certain, move the stopping point with them instead of stopping every run at once (or
    none)."""
    value, relative = parse_threshold(text)
    return value * float(np.median(score(ens, reference).score)) if relative else value


def read_candidates(path: Path) -> list[Atoms]:
    """Every frame of an ASE-readable file (positions in Å), as a one-line :class:`SelectError` when it cannot be
    read."""
    from schnet_model.data.formats_ase import read_frames

    try:
        return read_frames(path)
    except DataError as e:
        raise SelectError(str(e)) from None


def write_selection(frames: list[Atoms], out: Path) -> Path:
    """Extended XYZ, written atomically."""
    import io

    import ase.io

    from schnet_model.files import write_text

    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    write_text(out, buf.getvalue())
    return out


__all__ = ["POOL_FACTOR", "STRATEGIES", "Scored", "SelectError", "Selection", "Strategy", "choose", "descriptors",
           "kelvin", "parse_temperatures", "parse_threshold", "read_candidates", "score", "select", "selected_frames",
           "threshold_eV", "write_selection"]
