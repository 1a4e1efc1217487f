"""A time budget's plan: screen many configurations cheaply, then train the best to convergence with all k folds.

With ``search.time_budget`` (and ``search.plan: auto``), ``sweep run`` measures one epoch of one fold of the first
configuration and plans two rungs from it:

1. **screen** — ``n`` configurations (the paper configuration first, then Optuna's) on fold 0 alone for ``r``
   epochs each: a fifth of a full trial's cost per epoch with k = 5, so many more configurations are tried than
   k-fold trials could be; ranked by fold 0's validation loss.
2. **final** — the ``m`` best screened configurations (``m`` ≥ 1: as many as the time left can train to
   convergence, at most ``MAX_FINALISTS``), all k folds, until early stopping, ``max_epochs`` or their share of the
   time left; a trial whose time is up finalises its best fold states (models saved and evaluated, status
   ``stopped by budget``). The paper configuration is a baseline, not a privilege: it is screened like the others
   and promoted only if it screens among the best (``search.baseline: screen``, the default; its screening result
   is reported next to the best configuration's); ``search.baseline: final`` always trains it with all k folds too,
   so that what the search bought is measured at full fidelity — at the price of the best configurations' time.

The cost model is linear in CPU-seconds: a fold-epoch costs ``fold_epoch_seconds × cpus`` of the screening trial,
whatever layout runs it. Asynchronous successive halving (ASHA) without a plan lets the first trial run to
``max_t`` before any other is compared with it; under a budget that spends the budget on one configuration.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

SCREEN_SHARE = 1 / 3  # of the usable budget, for the screening rung
USABLE = 0.9  # of the budget: the rest is start-up, finalisation and the drivers' own work
MIN_SCREENED = 10  # configurations the screening rung aims at (the target for 25 minutes on 2 cores)
MAX_FINALISTS = 4
STARTUP_SECONDS = 5.0  # a trial's start-up (placement group, actors, data): measured median 3–4 s on 2 cores


@dataclass(frozen=True)
class Rung:
    """One rung: ``configs`` configurations × ``folds`` folds × up to ``epochs`` epochs, ``concurrent`` at a time,
    within ``seconds`` of wall time."""

    configs: int
    folds: int
    epochs: int
    concurrent: int
    seconds: float
    epoch_seconds: float  # estimated wall seconds of one epoch of one trial of this rung


@dataclass(frozen=True)
class BudgetPlan:
    """The plan of a time-budgeted sweep (see the module docstring)."""

    budget: float  # seconds, search.time_budget
    fold_epoch_seconds: float  # measured: one epoch of one fold of the first configuration, at a screening trial's CPUs
    cpus: float  # the machine's (or the largest node's) CPUs the trials share
    screen: Rung
    final: Rung
    trial_seconds: float | None  # each final trial's share when the finalists run one after another
    baseline_final: bool = True  # the paper configuration is always a finalist (search.baseline: final)

    def lines(self) -> list[str]:
        s, f = self.screen, self.final
        cap = f" each (its share: {self.trial_seconds:.0f} s)" if self.trial_seconds else ""
        return [
            f"budget plan for {self.budget:.0f} s: one epoch of one fold measured at {self.fold_epoch_seconds:.2f} s",
            f"  rung 1, screen: {s.configs} configurations × fold 0 × {s.epochs} epochs, {s.concurrent} at a time "
            f"(≈ {s.epoch_seconds:.1f} s an epoch, ≈ {s.seconds:.0f} s)",
            f"  rung 2, final: {self.finalists()} × {f.folds} folds × up to "
            f"{f.epochs} epochs{cap}, {f.concurrent} at a time (≈ {f.epoch_seconds:.1f} s an epoch, ≈ {f.seconds:.0f} s); "
            f"a trial whose time is up keeps its best fold states",
        ]

    def finalists(self) -> str:
        m = self.final.configs
        if self.baseline_final:
            return f"the paper configuration + the {m - 1} best screened"
        return f"the {'best' if m == 1 else f'{m} best'} screened configuration{'s' if m > 1 else ''}"

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BudgetPlan:
        return cls(**{**d, "screen": Rung(**d["screen"]), "final": Rung(**d["final"])})


def make_plan(budget: float, fold_epoch_seconds: float, cpus: float, k: int, screen_cpus: float, screen_concurrent: int,
              final_cpus: float, final_concurrent: int, max_epochs: int, num_samples: int, grace: int,
              startup: float = STARTUP_SECONDS, baseline_final: bool = False) -> BudgetPlan:
    """The two rungs for ``budget`` seconds, from one measured fold-epoch.

    Args:
        budget: seconds of the whole search.
        fold_epoch_seconds: one epoch of one fold with ``screen_cpus`` CPUs.
        cpus: CPUs the trials share.
        k: folds of a final trial.
        screen_cpus, screen_concurrent: CPUs of one screening trial, and how many run at once.
        final_cpus, final_concurrent: the same for the final rung's k-fold trials.
        max_epochs: a final trial's epoch limit (it usually stops earlier: early stopping).
        num_samples: the spec's number of configurations (the screening rung tries at most this many).
        grace: the epochs a configuration gets before it is judged (ASHA's grace period): the screening epochs,
            lowered when fewer than ``MIN_SCREENED`` configurations would fit.
        startup: seconds a trial takes to start (counted once per trial, in its slot).
        baseline_final: the paper configuration is a finalist whatever its screening (``search.baseline: final``).
    """
    usable = USABLE * budget
    work = fold_epoch_seconds * screen_cpus  # CPU-seconds of one fold-epoch
    slots = min(cpus, screen_cpus * screen_concurrent)  # CPUs the screening trials keep busy
    screen_time = SCREEN_SHARE * usable
    screen_cpu_seconds = screen_time * slots

    def configs(epochs: int) -> int:  # configurations that fit, each with its start-up
        return math.floor(screen_cpu_seconds / (epochs * work + startup * screen_cpus))

    epochs = max(1, min(grace, max_epochs))
    n = configs(epochs)
    if n < min(MIN_SCREENED, num_samples):  # fewer epochs, more configurations
        want = min(MIN_SCREENED, num_samples)
        epochs = max(1, math.floor((screen_cpu_seconds / want - startup * screen_cpus) / work))
        n = configs(epochs)
    n = max(1, min(n, num_samples))
    screen_wall = n * (epochs * work + startup * screen_cpus) / slots
    final_time = usable - screen_wall
    final_cpu_seconds = final_time * min(cpus, final_cpus * final_concurrent)
    fit = math.floor(final_cpu_seconds / (max_epochs * k * work))  # finalists the time left trains to max_epochs
    if baseline_final:
        m = int(np.clip(fit, 2, MAX_FINALISTS))
        m = min(m, n + 1) if n > 1 else 1  # the paper configuration is among the screened ones
    else:
        m = int(np.clip(fit, 1, min(MAX_FINALISTS, n)))
    final_epoch = k * work / final_cpus
    share = final_time * min(final_concurrent, m) / m if m > final_concurrent else None
    screen = Rung(n, 1, epochs, screen_concurrent, screen_wall, fold_epoch_seconds)
    final = Rung(m, k, max_epochs, final_concurrent, final_time, final_epoch)
    return BudgetPlan(budget, fold_epoch_seconds, cpus, screen, final, share, baseline_final)


def measure_fold_epoch(model_cfg, train_cfg, train, val, threads: int) -> float:
    """Wall seconds of one training epoch (and its validation) of one fold with ``threads`` CPU threads."""
    from schnet_model import SchNet, Trainer

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        torch.manual_seed(train_cfg.seed)
        trainer = Trainer(SchNet(model_cfg), train, val, train_cfg.model_copy(update={"device": "cpu", "num_threads": None}))
        t0 = time.perf_counter()
        trainer.run_epoch()
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def is_config(params: dict, point: dict) -> bool:
    """Whether a trial's ``params`` are the configuration ``point`` (e.g. the paper's; its keys are the searched ones)."""
    return all(params.get(key) == v for key, v in point.items())


def top_configs(trials, n: int, exclude: dict | None = None) -> list[dict]:
    """The ``n`` best screened configurations (by fold 0's best validation loss), without ``exclude``."""
    ranked = sorted((t for t in trials if t.val_loss_mean is not None and np.isfinite(t.val_loss_mean)),
                    key=lambda t: t.val_loss_mean)
    out: list[dict] = []
    for t in ranked:
        if exclude is not None and is_config(t.params, exclude):
            continue
        if t.params not in out:
            out.append(dict(t.params))
        if len(out) == n:
            break
    return out


__all__ = ["BudgetPlan", "Rung", "is_config", "make_plan", "measure_fold_epoch", "top_configs"]
