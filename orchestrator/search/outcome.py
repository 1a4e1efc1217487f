"""What a sweep ends with: one summary per trial (best first), the sweep's outcome, the results table and
the line that says what the search bought over the paper configuration."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from orchestrator.tracking import keys
from orchestrator.tracking.statuses import (
    RANK,
    SCREENED,
    trial_status,
)

METRIC = "val_loss_mean"
# a screening trial's expected loss in the final rung: its curve extrapolated (plan.extrapolate)
SCREEN_SCORE = "screen_score"


@dataclass
class TrialSummary:
    """What became of one trial, as the results table, the searcher's warm start and MLflow's reconciliation read it."""

    trial_id: str
    status: str  # orchestrator.tracking.statuses
    params: dict[str, Any]
    val_loss_mean: float | None  # the CV objective: best (completed) or last fold-mean validation loss
    val_loss_std: float | None
    epochs: int | None
    tests: dict[str, dict[str, float | None]]  # {test set: {"energy": MAE, "forces": MAE}} of the fold-mean prediction
    checkpoint: Any = None  # the final (or last) tune.Checkpoint; None if it saved none
    train_seconds: float = 0.0
    startup_seconds: float | None = None
    step_mode: str | None = None
    error: str | None = None  # the last line of a failed trial's error
    earlier: bool = False  # a trial of an earlier run of this sweep (an extension's predecessors)
    # screening: the loss its learning curve extrapolates to at the final rung's training
    predicted: float | None = None
    cpus: float = 0.0  # CPUs the trial held (its training seconds × these = CPU-seconds of training)


@dataclass
class SweepOutcome:
    """A sweep's result: its trials, best first."""

    name: str
    storage: Path
    parent_run_id: str
    _: KW_ONLY
    trials: list[TrialSummary]
    best: TrialSummary | None
    seconds: float
    cpus: float = 1.0  # CPUs the trials shared (this machine's, or the cluster's)
    energy_unit: str = ""
    experiment_id: str = ""
    test_sets: list[str] = field(default_factory=list)  # named test sets (the table's columns)
    interrupted: bool = False  # Ctrl-C ended it: resumable with --resume
    baseline: TrialSummary | None = None  # the paper configuration at full fidelity (a budget plan's final rung)

    def overhead_report(self) -> str:
        """Share of the sweep's CPU-seconds (wall × the CPUs the trials shared) spent in training epochs, and per-trial
        start-up. A trial's epochs count with the CPUs it held (a final rung's one trial may hold them all)."""
        now = [t for t in self.trials if not t.earlier]  # this run's trials (not an extension's predecessors)
        train = sum(t.train_seconds * (t.cpus or 1.0) for t in now)
        share = train / (self.seconds * self.cpus) if self.seconds else 0.0
        starts = [t.startup_seconds for t in now if t.startup_seconds is not None]
        start = f"; trial start-up median {np.median(starts):.1f} s" if starts else ""
        modes = sorted({t.step_mode for t in self.trials if t.step_mode})
        mode = "".join(f"\nstacked step: {m}" for m in modes)
        return (f"time in training epochs: {train:.0f} CPU-s of {self.seconds:.0f} s wall × {self.cpus:g} CPUs "
                f"= {share:.0%}{start}{mode}")


def summarize(results, test_sets: list[str], budget_ran_out: bool = False) -> list[TrialSummary]:
    """One summary per trial, completed ones first by CV mean validation loss (statuses:
    :mod:`orchestrator.tracking.statuses`)."""
    out = []
    for r in results:
        m = r.metrics or {}
        out.append(TrialSummary(
            trial_id=m.get("trial_id") or Path(r.path).name,
            status=trial_status(r.error is not None, m, budget_ran_out),
            params=dict(r.config or {}), val_loss_mean=m.get("best_val_loss_mean", m.get(METRIC)),
            val_loss_std=m.get("val_loss_std"),
            epochs=m.get("epoch", m.get("training_iteration")), tests=keys.maes_by_test_set(m, test_sets),
            checkpoint=r.checkpoint, train_seconds=m.get("train_seconds") or 0.0,
            startup_seconds=m.get("startup_seconds"),
            step_mode=m.get("step_mode"), error=str(r.error).strip().splitlines()[-1] if r.error else None,
            predicted=_finite(m.get(SCREEN_SCORE)), cpus=float(m.get("cpus") or 0.0)))
    out.sort(key=rank)
    return out


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def rank(t: TrialSummary) -> tuple[int, float]:
    return RANK[t.status], t.val_loss_mean if t.val_loss_mean is not None else np.inf


def baseline_line(outcome: SweepOutcome) -> str:
    """What the search bought: the best trial against the paper configuration trained at full fidelity."""
    base, best, unit = outcome.baseline, outcome.best, outcome.energy_unit
    assert base is not None and best is not None
    name = keys.headline_set({keys.ensemble_mae(t, p): v for t, m in best.tests.items() for p, v in m.items()
                              if v is not None}) or ""

    def errs(t: TrialSummary) -> str:
        m = t.tests.get(name, {})
        cv = "–" if t.val_loss_mean is None else f"{t.val_loss_mean:.4g}"
        fe = "" if m.get("forces") is None else f", {name} F MAE {m['forces']:.4g} {unit}/Å"
        ee = "" if m.get("energy") is None else f", {name} E MAE {m['energy']:.4g} {unit}"
        return f"CV val loss {cv}{fe}{ee} ({t.status}, {t.epochs} epochs)"

    if best.trial_id == base.trial_id:
        return (f"the paper configuration is the best trial ({errs(base)}): "
                "the search found nothing better in its budget")
    if base.status == SCREENED:  # search.baseline: screen, and it was not promoted: compare the two screenings
        screened = sorted((t for t in outcome.trials if t.status == SCREENED and t.val_loss_mean is not None),
                          key=lambda t: t.val_loss_mean)
        mine = next((t for t in screened if t.params == best.params), None)
        place = next((i + 1 for i, t in enumerate(screened) if t.trial_id == base.trial_id), None)
        vs = "" if mine is None else f" vs {mine.val_loss_mean:.4g} for the best trial's configuration"
        return (f"paper configuration (trial {base.trial_id}): screened on fold 0 for {base.epochs} epochs, val loss "
                f"{base.val_loss_mean:.4g}{vs} (rank {place} of {len(screened)}); "
                "not promoted, so the final rung's time "
                f"went to the best screened (search.baseline: final trains it with all k folds too)\n"
                f"best trial ({best.trial_id}): {errs(best)}")
    gain = ""
    bf, pf = best.tests.get(name, {}).get("forces"), base.tests.get(name, {}).get("forces")
    if bf is not None and pf:
        gain = f"; the search bought {100 * (pf - bf) / pf:+.0f}% on the force MAE"
    return (f"paper configuration (trial {base.trial_id}): {errs(base)}\n"
            f"best trial ({best.trial_id}): {errs(best)}{gain}")


def results_table(outcome: SweepOutcome, unit: str, top: int = 10) -> Table:
    """Rich table of the top trials."""
    caption = None if outcome.test_sets else "no test set: no test errors (give dataset.n_test or dataset.test_path)"
    t = Table(title=f"{outcome.name}: top trials ({outcome.seconds:.0f} s)", caption=caption)
    # [..] is not markup
    cols = [(name, p, escape(f"{name} {p[0].upper()} MAE [{unit}{'/Å' if p == 'forces' else ''}]"))
            for name in outcome.test_sets for p in keys.PROPS]
    for c in ("trial", "status", "CV val loss (mean ± std)", *(c for _, _, c in cols), "epochs"):
        t.add_column(c)
    for r in outcome.trials[:top]:
        std = f" ± {r.val_loss_std:.3g}" if r.val_loss_std is not None else ""
        maes = [r.tests.get(name, {}).get(p) for name, p, _ in cols]
        t.add_row(r.trial_id, r.status if not r.error else f"failed: {r.error[:60]}",
                  "–" if r.val_loss_mean is None else f"{r.val_loss_mean:.4g}{std}",
                  *("–" if v is None else f"{v:.4g}" for v in maes), str(r.epochs))
    return t
