"""What the driver hands a trial: the shared data (:class:`TrialData`), the phase's context (:class:`TrialContext`)
and its clock (:class:`TrialClock`). Built by :mod:`orchestrator.search.phases`, read by
:func:`orchestrator.search.trial.run_trial`; light (no torch), so the driver imports it at once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from orchestrator.spec.sweep import SweepSpec

FINALISE_GRACE = 10.0
"""Seconds Tune's own time limit (a backstop) runs past the budget, so that a trial finalising just before the
deadline on a loaded machine is not cut off: a sweep ends within its budget plus at most this."""

FINISH_SAFETY = 1.25
"""Factor on a trial's measured estimate of its finalisation (:func:`finish_seconds`): the estimate scales the
validation predictions of the last epoch, and a loaded machine or a first call of a new batch shape runs slower."""

COMPILE_PAYS_AFTER = 240.0
"""Seconds of training a trial must have ahead for compiling its CPU kernels to pay: torch.compile costs 5–42 s per
new configuration here (a cold cache on a 2-core machine: 35 s) for a 20–30 % faster epoch (docs/benchmarks.md), so
a budgeted trial with less time trains eagerly instead of spending its share compiling."""


@dataclass(frozen=True)
class TrialClock:
    """When a trial must end with its results kept (absolute ``time.time()`` seconds; None: no limit).

    ``deadline``: the search's time budget ends (every trial finalises before it); ``trial_seconds``: this trial's
    own share of it (a planned final rung that runs its configurations one after another). A trial finalises after
    the epoch for which another epoch and the finalisation would not fit: ``finish`` seconds, the trial's estimate
    from its own validation time (:func:`finish_seconds`: predictions on the validation and test sets, the offset
    refit), or, not given, one more epoch.
    """

    deadline: float | None = None
    trial_seconds: float | None = None
    epoch_seconds: float | None = None  # an estimate of one epoch of this trial (the plan's measurement), if known
    finish_margin: float = 5.0  # seconds kept for finalising, besides its estimate (or one epoch)
    train_allotment: float | None = None  # screening: seconds of training each configuration gets (equal compute)
    horizon: float | None = None  # screening: the final rung's training seconds per fold (where curves are compared)
    to_the_end: bool = False  # a planned final rung: its time ends its folds, not early stopping (best weights kept)

    def out_of_time(self, started: float, last_epoch: float, finish: float | None = None) -> bool:
        """After an epoch of ``last_epoch`` seconds, in a trial that started at ``started`` and would take ``finish``
        seconds to finalise (None: an epoch's): finalise now?"""
        need = last_epoch + (last_epoch if finish is None else finish) + self.finish_margin  # next epoch, finalising
        now = time.time()
        return ((self.deadline is not None and now + need > self.deadline) or
                (self.trial_seconds is not None and now - started + last_epoch > self.trial_seconds))

    def allotment_spent(self, train_seconds: float, last_epoch: float) -> bool:
        """Screening: the allotment is spent to the nearest epoch (another epoch would overshoot it by more than
        stopping now falls short of it)."""
        return self.train_allotment is not None and train_seconds + 0.5 * last_epoch >= self.train_allotment

    def epochs_left(self, *, started: float, epoch: int, epoch_wall: float, epoch_train: float,
                    finish: float | None = None) -> float | None:
        """The epochs this trial will still train before its time is up, at its pace so far (``epoch_wall`` seconds
        of wall clock and ``epoch_train`` of training an epoch; ``epoch`` trained), for a cosine schedule to decay
        over; None: no limit.

        Screening: up to the final rung's training per fold (``horizon``), so that a configuration's learning rate
        follows what it would in the final rung (and a finalist's fold 0 goes on from its screening on the same
        schedule); otherwise the epochs :meth:`out_of_time` and the trial's own share still allow.
        """
        if self.horizon:
            return max(0.0, self.horizon / max(epoch_train, 1e-9) - epoch)
        left = [seconds / max(epoch_wall, 1e-9) - reserved for seconds, reserved in self._limits(started, finish)]
        return max(0.0, min(left)) if left else None

    def seconds_left(self, started: float) -> float | None:
        """Seconds this trial (started at ``started``) may still train before it must finalise; None: no limit."""
        left = [seconds for seconds, _ in self._limits(started)]
        return max(0.0, min(left)) if left else None

    def _limits(self, started: float, finish: float | None = None) -> list[tuple[float, float]]:
        """(seconds left, epochs of it kept back) under each limit this trial has: the deadline less the margin and
        the finalisation (``finish`` seconds; None: one epoch kept); its own share."""
        now, limits = time.time(), []
        if self.deadline is not None:
            limits.append((self.deadline - now - self.finish_margin - (finish or 0.0), 1.0 if finish is None else 0.0))
        if self.trial_seconds is not None:
            limits.append((self.trial_seconds - (now - started), 0.0))
        return limits

    def compile_pays(self, started: float) -> bool:
        """Compiling CPU kernels would pay for itself before this trial's time is up (:data:`COMPILE_PAYS_AFTER`)."""
        left = self.seconds_left(started)
        return left is None or left >= COMPILE_PAYS_AFTER

    def no_time_to_start(self) -> bool:
        """Not even one epoch and the finalisation fit before the deadline (needs an epoch estimate)."""
        if self.deadline is None or self.epoch_seconds is None:
            return False
        return time.time() + 2.0 * self.epoch_seconds + self.finish_margin > self.deadline


def finish_seconds(val_seconds: float, n_train: int, n_val: int, n_test: int) -> float | None:
    """Seconds a trial's finalisation will take, from the last epoch's validation (``val_seconds`` for a fold's
    ``n_val`` molecules, forces included): the best weights' energies on the ``n_train + n_val`` molecules (the offset
    refit; energies alone, counted at half a molecule with forces), then predictions with forces on the validation
    set and the ``n_test`` molecules of the test sets; times :data:`FINISH_SAFETY`. None without a measurement.

    It is what makes a large test set fit: 1,000 test molecules of a 21-atom molecule cost PaiNN's five folds 41 s
    to predict eagerly on 2 cores, two compiled epochs, where one epoch was kept for it before (docs/benchmarks.md).
    """
    if val_seconds <= 0 or n_val <= 0:
        return None
    return FINISH_SAFETY * val_seconds / n_val * (0.5 * (n_train + n_val) + n_val + n_test)


@dataclass(frozen=True)
class TestLabels:
    """A test set's reference values, all a trial needs of it to score its fold-mean prediction."""

    energy: np.ndarray  # [n] energy unit of the data
    forces: np.ndarray | None  # [n_atoms, 3] energy unit / Å

    @classmethod
    def of(cls, data, idx: np.ndarray) -> TestLabels:
        test = data.subset(idx)
        return cls(test.E, test.F)


@dataclass(frozen=True)
class TrialData:
    """The sweep's data as every trial shares it: the molecules in Ray's object store (an ``ObjectRef``, resolved
    by the trial), the test sets' indices into them, and their reference values."""

    ref: Any  # ray.ObjectRef of the dataset's molecules, then every test file's
    tests: dict[str, np.ndarray]  # test set name → indices into the molecules
    labels: dict[str, TestLabels]  # test set name → reference values


@dataclass(frozen=True)
class TrialContext:
    """One phase's context of every trial it runs (passed by ``tune.with_parameters(run_trial, ctx=...)``).

    What derives from the spec (layout, epochs, ρ of the objective) is read from it, not carried beside it.
    """

    data: TrialData
    spec_json: str  # the phase's SweepSpec (resources made explicit for its trials), as JSON
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train, val) indices of each fold a trial trains
    clock: TrialClock = field(default_factory=TrialClock)
    screen: bool = False  # a screening rung: fold 0 for its allotment, eager (no compilation)
    warm: dict[str, Any] = field(default_factory=dict)  # config_key → the screening checkpoint its fold 0 continues

    @cached_property
    def spec(self) -> SweepSpec:
        return SweepSpec.model_validate_json(self.spec_json)

    @property
    def k(self) -> int:
        return len(self.folds)

    @property
    def layout(self) -> str:
        """``stacked`` (the k folds in this process) or ``folds`` (one actor each)."""
        return self.spec.resources.resolved_layout()

    @property
    def max_epochs(self) -> int:
        return self.spec.max_epochs()

    @property
    def objective_rho(self) -> float | None:
        """ρ of the CV objective when ``training.rho`` is searched (else None: the validation loss is the objective)."""
        return self.spec.objective_rho()


__all__ = ["FINALISE_GRACE", "FINISH_SAFETY", "TestLabels", "TrialClock", "TrialContext", "TrialData"]
