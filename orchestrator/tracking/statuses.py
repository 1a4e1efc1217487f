"""What became of a trial, in one word the table, ``sweep status`` and MLflow all use."""

from __future__ import annotations

import time
from typing import Any

COMPLETED, BUDGET, SCREENED, PRUNED, CUT, INTERRUPTED, NOT_STARTED, FAILED = (
    "completed", "stopped by budget", "screened", "pruned", "cut by budget", "interrupted", "not started", "failed")
FINALISED = (COMPLETED, BUDGET)  # trials with fold models, evaluated: candidates for the best trial and its ensemble
MLFLOW_STATUS = {COMPLETED: "FINISHED", BUDGET: "FINISHED", SCREENED: "FINISHED", FAILED: "FAILED"}  # others: KILLED
RANK = {COMPLETED: 0, BUDGET: 0, SCREENED: 1, PRUNED: 1, CUT: 1, INTERRUPTED: 1, FAILED: 2, NOT_STARTED: 3}
BUDGET_STOPPED = "budget_stopped"  # a final result's flag: the trial finalised its best fold states as time ran out
SCREEN = "screen"  # a final result's flag: a screening trial (fold 0 alone, a planned budget's first rung)
NOT_STARTED_FLAG = "not_started"  # a final result's flag: the budget left the trial no time to start


def trial_status(failed: bool, last: dict[str, Any] | None, budget_used: bool) -> str:
    """``failed``; ``completed`` (its final result); ``stopped by budget`` (a final result from its best fold
    states, made as ``search.time_budget`` ran out: models saved and evaluated like a completed trial's); ``screened``
    (a planned budget's first rung: fold 0 alone for a few epochs; never the best trial);
    ``pruned`` (ASHA stopped it: Tune marks the result it stopped on ``done``); ``not started`` (no epoch
    reported); else it was ended from outside — ``cut by budget`` when the budget ran out before it could
    finalise, ``interrupted`` otherwise (Ctrl-C, a crash)."""
    last = last or {}
    if failed:
        return FAILED
    if last.get("final"):
        return SCREENED if last.get(SCREEN) else BUDGET if last.get(BUDGET_STOPPED) else COMPLETED
    if not last.get("epoch"):
        return NOT_STARTED
    if last.get("done"):
        return PRUNED
    return CUT if budget_used else INTERRUPTED


def budget_used(time_budget: float | None, since: float) -> bool:
    """Whether ``search.time_budget`` seconds have run out since ``since`` (Tune's clock, to within a second)."""
    return time_budget is not None and time.time() - since >= time_budget - 1.0


def mlflow_status(status: str) -> str:
    return MLFLOW_STATUS.get(status, "KILLED")
