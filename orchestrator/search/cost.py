"""What one training epoch of a configuration costs, before it runs: the budget plan's cost model.

An epoch of one fold (training steps over its training molecules, then the validation pass) is dominated by
the continuous-filter convolutions, whose work grows with interactions × filters × pairs per molecule; the atom-wise
layers add interactions × atoms × atom basis × (filters + atom basis); each optimiser step adds a fixed cost per
interaction block and one of its own (batch size → steps per epoch). :class:`EpochCost` prices a configuration as

    seconds = scale · [c_pair·N·T·P·F/10⁶ + c_atom·N·T·A·(B·F + B²)/10⁷ + c_layer·S·T/10² + c_step·S/10²]

with N the fold's training + validation molecules, T interactions, P pairs and A atoms per molecule, F filters,
B atom basis, S steps per epoch. The coefficients were fitted (non-negative least squares, relative errors) on 54
measured eager fold-epochs at one thread: 18 configurations (2–6 interactions, 64/128 filters and atom basis, batch
8/16/32) × ethanol (9 atoms), acetylacetone (15) and aspirin (21) — median error 6 %, worst 20 % (docs/benchmarks.md).
PaiNN has its own coefficients, with F features per pair and F² per atom (``schnet_model.nn.family.cost_widths``),
fitted on 22 epochs (2 and 5 blocks × 32/64/128 features × batch 8/32 and the paper's 3 × 128, 5 Å cutoff) × ethanol
and acetylacetone — median error 8 %, worst 18 %.
``scale`` is this machine's speed: the plan sets it from the one epoch it measures, and it is re-fitted from every
epoch the screening rung measured (:meth:`EpochCost.calibrated`), so a finalist's cost is priced from what ran here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from schnet_model import TrainingConfig
from schnet_model.nn.family import AnyConfig, cost_widths, size

COEF = {"schnet": {"pair": 0.0251, "atom": 0.00181, "layer": 0.101, "step": 0.097},
        "painn": {"pair": 0.1424, "atom": 0.007018, "layer": 0.391, "step": 0.0}}
"""Seconds per unit of each term at one thread on the machine they were measured on (scale 1), by model family."""


@dataclass(frozen=True)
class EpochCost:
    """The cost model of one fold's epoch on this data (see the module docstring).

    ``pairs`` holds the mean pairs per molecule by cutoff (``"none"``: all pairs); a cutoff not in it is priced as all
    pairs (an upper bound).
    """

    n_train: int  # training molecules of one fold
    n_val: int  # its validation molecules
    atoms: float  # mean atoms per molecule
    pairs: dict[str, float]  # mean ordered pairs per molecule, by cutoff
    scale: float = 1.0  # this machine: measured seconds ÷ the model's (1 thread)

    def units(self, model: AnyConfig, training: TrainingConfig) -> float:
        """The configuration's epoch in model units (seconds on the reference machine, scale 1)."""
        n, t = self.n_train + self.n_val, model.n_interactions
        f, b2 = cost_widths(model)  # per pair, per atom (SchNet: filters, B·F + B²)
        c = COEF[model.family]
        p = self.pairs.get(cutoff_key(model.cutoff), self.pairs["none"])
        steps = math.ceil(self.n_train / training.batch_size)
        return (c["pair"] * n * t * p * f / 1e6 + c["atom"] * n * t * self.atoms * b2 / 1e7
                + c["layer"] * steps * t / 1e2 + c["step"] * steps / 1e2)

    def seconds(self, model: AnyConfig, training: TrainingConfig) -> float:
        """Estimated wall seconds of one fold-epoch of this configuration at one thread, on this machine."""
        return self.scale * self.units(model, training)

    def calibrated(self, measured: list[tuple[AnyConfig, TrainingConfig, float]]) -> EpochCost:
        """The same model with ``scale`` fitted to measured fold-epochs (seconds at one thread): the median ratio,
        robust to one configuration's odd epoch. Unchanged when nothing was measured."""
        ratios = [s / self.units(m, t) for m, t, s in measured if s > 0 and np.isfinite(s)]
        return replace(self, scale=float(np.median(ratios))) if ratios else self

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EpochCost:
        return cls(**d)


def cutoff_key(cutoff: float | None) -> str:
    return "none" if cutoff is None else f"{float(cutoff):g}"


def describe(model: AnyConfig, training: TrainingConfig) -> str:
    """A configuration's size in a few characters: interactions × filters × atom basis (SchNet) or PaiNN
    interactions × features, batch."""
    return f"{size(model)}, batch {training.batch_size}"


def data_cost(molecules, n_train: int, n_val: int, cutoffs: list[float | None], sample: int = 200) -> EpochCost:
    """The cost model of one fold of ``molecules`` (a :class:`~schnet_model.data.molecules.Molecules`), with the mean
    pairs per molecule for each cutoff in ``cutoffs`` (counted on up to ``sample`` molecules), scale 1."""
    from schnet_model.data.neighbors import cutoff_pairs_many

    n_atoms = np.asarray(molecules.n_atoms, dtype=np.int64)
    pairs = {"none": float(np.mean(n_atoms * (n_atoms - 1)))}
    idx = np.linspace(0, len(n_atoms) - 1, min(sample, len(n_atoms))).astype(np.int64)
    part = molecules.subset(idx)
    for c in {c for c in cutoffs if c is not None}:
        _, counts = cutoff_pairs_many(part.R, part.atom_ptr, float(c))
        pairs[cutoff_key(c)] = float(np.mean(counts))
    return EpochCost(n_train, n_val, float(n_atoms.mean()), pairs)


__all__ = ["COEF", "EpochCost", "cutoff_key", "data_cost", "describe"]
