"""A time budget's plan: screen many configurations at equal compute, then train the best with all k folds.

With ``search.time_budget`` (and ``search.plan: auto``), ``sweep run`` measures one epoch of one fold of the first
configuration (the paper's), prices every other configuration with the cost model (:mod:`orchestrator.search.cost`)
and plans two rungs:

1. **screen** — ``n`` configurations (the paper configuration first, then Optuna's) on fold 0 alone, each for the
   same seconds of training (equal compute, not equal epochs: a configuration four times as costly per epoch gets a
   quarter of the epochs, as it would in the final rung). No screening trial starts once the rung's share of the
   budget could not pay for its allotment (the final rung's share is protected). Each configuration is ranked by the
   validation loss it reached in those seconds (:func:`screen_score`), so a configuration that only wins with epochs
   it will not get is not chosen; the loss its curve extrapolates to at the final rung's training per fold
   (:func:`extrapolate`) is reported beside it.
2. **final** — the ``m`` best screened configurations (``m`` ≥ 1: as many as the time left can train to
   convergence, at most ``MAX_FINALISTS``), all k folds, until early stopping, ``max_epochs`` or their share of the
   time left; a trial whose time is up finalises its best fold states (models saved and evaluated, status
   ``stopped by budget``). The paper configuration is a baseline, not a privilege: it is screened like the others
   and promoted only if it screens among the best (``search.baseline: screen``, the default; its screening result
   is reported next to the best configuration's); ``search.baseline: final`` always trains it with all k folds too,
   so that what the search bought is measured at full fidelity — at the price of the best configurations' time.

Screening trials run their kernels eagerly: ``torch.compile`` costs 5–40 s per new configuration on CPU, more than
it saves in a screening allotment; the final rung compiles (its trials run for many minutes).
The plan is linear in CPU-seconds: a screening allotment of ``s`` seconds at ``c`` CPUs is ``s·c`` CPU-seconds,
whatever layout runs it. Asynchronous successive halving (ASHA) without a plan lets the first trial run to
``max_t`` before any other is compared with it; under a budget that spends the budget on one configuration.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from orchestrator.search.cost import EpochCost, describe

SCREEN_SHARE = 1 / 3  # of the usable budget, for the screening rung
USABLE = 0.9  # of the budget: the rest is start-up, finalisation and the drivers' own work
MIN_SCREENED = 10  # configurations the screening rung aims at (the target for 25 minutes on 2 cores)
MAX_FINALISTS = 4
STARTUP_SECONDS = 5.0  # a trial's start-up (placement group, actors, data): measured median 3–4 s on 2 cores
MIN_SCREEN_EPOCHS = 3  # the paper configuration's epochs in the smallest allotment: a curve to extrapolate
MAX_SLOPE = 1.0  # the steepest learning curve extrapolated: validation loss ∝ (training seconds)^-1


@dataclass(frozen=True)
class Rung:
    """One rung: ``configs`` configurations × ``folds`` folds × up to ``epochs`` epochs, ``concurrent`` at a time,
    within ``seconds`` of wall time."""

    configs: int
    folds: int
    epochs: int  # screening: the paper configuration's epochs in its allotment; final: max_epochs
    concurrent: int
    seconds: float
    epoch_seconds: float  # estimated wall seconds of one epoch of one trial of this rung (the paper configuration)


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
    screen_each: float = 0.0  # wall seconds of training each screened configuration gets (at a screening trial's CPUs)
    horizon: float = 0.0  # the final rung's training per fold, in the same seconds: where learning curves are compared
    last_start: float = 0.0  # seconds after the plan starts: no screening trial starts later
    screen_cpus: float = 1.0  # CPUs of one screening trial
    cost: dict | None = None  # the cost model (EpochCost.as_dict), scale set by the measured epoch
    costliest: str = ""  # the space's costliest configuration and its estimated fold-epoch

    def lines(self) -> list[str]:
        s, f = self.screen, self.final
        cap = f" each (its share: {self.trial_seconds:.0f} s)" if self.trial_seconds else ""
        priced = ""
        if self.cost:
            c = EpochCost.from_dict(self.cost)
            priced = (f"; the others priced by their size (interactions, filters, atom basis, {c.pairs['none']:.0f} "
                      f"pairs per molecule, batch size)")
        worst = f"; the costliest, {self.costliest}" if self.costliest else ""
        return [
            f"budget plan for {self.budget:.0f} s: one epoch of one fold of the paper configuration measured at "
            f"{self.fold_epoch_seconds:.2f} s{priced}",
            f"  rung 1, screen: {s.configs} configurations × fold 0 × {self.screen_each:.3g} s of training each "
            f"(equal compute: the paper configuration ≈ {s.epochs} epochs{worst}), {s.concurrent} at a time "
            f"(≈ {s.seconds:.0f} s; none starts after {self.last_start:.0f} s)",
            f"  rung 2, final: {self.finalists()} × {f.folds} folds × up to "
            f"{f.epochs} epochs{cap}, {f.concurrent} at a time (≈ {f.epoch_seconds:.1f} s an epoch, "
            f"≈ {f.seconds:.0f} s "
            f"at least: it runs until the budget ends, so it also gets the {1 - USABLE:.0%} kept in reserve and any "
            f"time screening leaves); "
            f"ranked by the validation loss each reached in its screening seconds; this rung's horizon "
            f"{self.horizon:.0f} s of training per fold; a trial whose time is up keeps its best fold states",
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
        known = {f.name for f in fields(cls)}  # a plan written by an older version lacks the newer fields
        return cls(**{**{k: v for k, v in d.items() if k in known}, "screen": Rung(**d["screen"]),
                      "final": Rung(**d["final"])})


def make_plan(budget: float, fold_epoch_seconds: float, *, cpus: float, k: int, screen_cpus: float,
              screen_concurrent: int, final_cpus: float, final_concurrent: int, max_epochs: int, num_samples: int,
              grace: int, startup: float = STARTUP_SECONDS, baseline_final: bool = False, cost: EpochCost | None = None,
              costliest: tuple[str, float] | None = None) -> BudgetPlan:
    """The two rungs for ``budget`` seconds, from one measured fold-epoch.

    Args:
        budget: seconds of the whole search.
        fold_epoch_seconds: one epoch of one fold of the paper configuration with ``screen_cpus`` CPUs.
        cpus: CPUs the trials share.
        k: folds of a final trial.
        screen_cpus, screen_concurrent: CPUs of one screening trial, and how many run at once.
        final_cpus, final_concurrent: the same for the final rung's k-fold trials.
        max_epochs: a final trial's epoch limit (it usually stops earlier: early stopping).
        num_samples: the spec's number of configurations (the screening rung tries at most this many).
        grace: ASHA's grace period: each configuration's screening allotment is the paper configuration's time
            for this many epochs, lowered when fewer than ``MIN_SCREENED`` configurations would fit.
        startup: seconds a trial takes to start (counted once per trial, in its slot).
        baseline_final: the paper configuration is a finalist whatever its screening (``search.baseline: final``).
        cost: the cost model, its scale set by the measured epoch (kept in the plan for the record).
        costliest: the space's costliest configuration (its description, its estimated fold-epoch seconds).
    """
    usable = USABLE * budget
    work = fold_epoch_seconds  # wall seconds of one fold-epoch of the paper configuration at screen_cpus
    slots = min(cpus, screen_cpus * screen_concurrent)  # CPUs the screening trials keep busy
    screen_time = SCREEN_SHARE * usable
    screen_cpu_seconds = screen_time * slots

    def configs(each: float) -> int:  # configurations that fit, each with its start-up
        return math.floor(screen_cpu_seconds / ((each + startup) * screen_cpus))

    wave = max(1, math.floor(slots / screen_cpus))  # configurations screened at once
    least = max(work, min(min(MIN_SCREEN_EPOCHS, max_epochs) * work,
                          screen_cpu_seconds / (wave * screen_cpus) - startup))
    each = max(least, min(grace, max_epochs) * work)
    n = configs(each)
    if n < min(MIN_SCREENED, num_samples):  # less training each, more configurations (never below the least)
        want = min(MIN_SCREENED, num_samples)
        each = max(least, screen_cpu_seconds / (want * screen_cpus) - startup)
        n = configs(each)
    n = max(1, min(n, num_samples))
    screen_wall = n * (each + startup) * screen_cpus / slots
    final_time = usable - screen_wall
    final_cpu_seconds = final_time * min(cpus, final_cpus * final_concurrent)
    fit = math.floor(final_cpu_seconds / (max_epochs * k * work * screen_cpus))  # finalists trained to max_epochs
    if baseline_final:
        m = int(np.clip(fit, 2, MAX_FINALISTS))
        m = min(m, n + 1) if n > 1 else 1  # the paper configuration is among the screened ones
    else:
        m = int(np.clip(fit, 1, min(MAX_FINALISTS, n)))
    final_epoch = k * work * screen_cpus / final_cpus
    share = final_time * min(final_concurrent, m) / m if m > final_concurrent else None
    screen = Rung(n, 1, max(1, round(each / work)), screen_concurrent, screen_wall, fold_epoch_seconds)
    final = Rung(m, k, max_epochs, final_concurrent, final_time, final_epoch)
    horizon = final_cpu_seconds / (m * k * screen_cpus)
    worst = ""
    if costliest is not None:
        what, seconds = costliest
        worst = f"{what}, ≈ {max(1, math.floor(each / max(seconds, 1e-9)))}"
    return BudgetPlan(budget, fold_epoch_seconds, cpus, screen, final, share, baseline_final, screen_each=each,
                      horizon=horizon, last_start=max(0.0, screen_wall - each - startup), screen_cpus=screen_cpus,
                      cost=cost.as_dict() if cost is not None else None, costliest=worst)


def costliest(space: dict, materialize, cost: EpochCost) -> tuple[str, float] | None:
    """The space's costliest configuration by the cost model: its description and estimated fold-epoch seconds.
    Searched keys are taken at their extremes (the cost is monotonic in each); None when nothing searched matters."""
    keys = [k for k in space if k in ("model.family", "model.n_interactions", "model.n_filters", "model.n_atom_basis",
                                      "model.cutoff", "training.batch_size")]
    if not keys:
        return None
    best: tuple[str, float] | None = None
    for values in itertools.product(*(space[k].extremes() for k in keys)):
        try:
            model, training = materialize(dict(zip(keys, values, strict=True)))
        except ValueError:  # an extreme another key's value rules out
            continue
        s = cost.seconds(model, training)
        if best is None or s > best[1]:
            best = (describe(model, training), s)
    return best


def extrapolate(curve: list[tuple[float, float]], horizon: float) -> float | None:
    """The validation loss a learning curve reaches at ``horizon`` seconds of training.

    ``curve``: (cumulative training seconds, validation loss) after each epoch. The best-so-far loss (what early
    stopping keeps) of the curve's second half is fitted as a power law in training time, log L = a + s·log t, and
    continued from the last point to ``horizon``; the slope is clipped to [−``MAX_SLOPE``, 0] (a curve that got worse
    is not continued downwards, nor one whose last epochs fell off a cliff beyond a 1/t law). With fewer than 3 points
    in the second half, or a horizon no later than the curve's end, the best loss itself. None: no finite loss.
    """
    pts = [(float(t), float(v)) for t, v in curve if t > 0 and np.isfinite(v) and v > 0]
    if not pts:
        return None
    t = np.array([p[0] for p in pts])
    best = np.minimum.accumulate(np.array([p[1] for p in pts]))
    tail = t >= t[-1] / 2
    if horizon <= t[-1] or tail.sum() < 3:
        return float(best[-1])
    slope = float(np.polyfit(np.log(t[tail]), np.log(best[tail]), 1)[0])
    slope = float(np.clip(slope, -MAX_SLOPE, 0.0))
    return float(best[-1] * (horizon / t[-1]) ** slope)


def measure_fold_epoch(model_cfg, train_cfg, train, val, threads: int) -> float:
    """Wall seconds of one training epoch (and its validation) of one fold with ``threads`` CPU threads, eager as
    screened: the second of two epochs (the first carries one-off warm-up, about half an epoch more)."""
    from schnet_model import Trainer
    from schnet_model.nn.family import build_model
    from schnet_model.threads import torch_threads

    with torch_threads(max(1, threads)):
        torch.manual_seed(train_cfg.seed)
        cfg = train_cfg.model_copy(update={"device": "cpu", "num_threads": None, "compile_after": None})  # as screened
        trainer = Trainer(build_model(model_cfg), train, val, cfg)
        trainer.run_epoch()
        t0 = time.perf_counter()
        trainer.run_epoch()
        return time.perf_counter() - t0


def is_config(params: dict, point: dict) -> bool:
    """Whether a trial's ``params`` are the configuration ``point`` (e.g. the paper's; its keys are the searched
    ones)."""
    return all(params.get(key) == v for key, v in point.items())


def screen_score(t) -> float | None:
    """What ranks a screened trial: its best validation loss after the rung's equal allotment of training seconds.

    Not the loss its curve extrapolates to (``predicted``, reported beside it): on aspirin the two ranked alike
    (``benchmarks/screen_ranking.py``: ρ 0.85 vs 0.80 against the loss at the horizon, both picking the best), and
    the one 25-minute sweep where they disagreed, the extrapolated pick (a 1/t tail continued 4.4×) lost to the
    paper configuration by 10 % where the equal-compute pick's kind won by 11 % (docs/benchmarks.md)."""
    v = t.val_loss_mean
    return v if v is not None and np.isfinite(v) else None


def top_configs(trials, n: int, exclude: dict | None = None) -> list[dict]:
    """The ``n`` best screened configurations (by :func:`screen_score`), without ``exclude``."""
    ranked = sorted((t for t in trials if screen_score(t) is not None), key=screen_score)
    out: list[dict] = []
    for t in ranked:
        if exclude is not None and is_config(t.params, exclude):
            continue
        if t.params not in out:
            out.append(dict(t.params))
        if len(out) == n:
            break
    return out


__all__ = ["BudgetPlan", "Rung", "costliest", "extrapolate", "is_config", "make_plan", "measure_fold_epoch",
           "screen_score", "top_configs"]
