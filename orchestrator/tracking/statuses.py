"""What became of a trial, in one word the table, ``sweep status`` and MLflow all use."""

from __future__ import annotations

import time
from typing import Any

COMPLETED, PRUNED, BUDGET, INTERRUPTED, NOT_STARTED, FAILED = (
    "completed", "pruned", "stopped by budget", "interrupted", "not started", "failed")
MLFLOW_STATUS = {COMPLETED: "FINISHED", FAILED: "FAILED"}  # every other end is KILLED
RANK = {COMPLETED: 0, PRUNED: 1, BUDGET: 1, INTERRUPTED: 1, FAILED: 2, NOT_STARTED: 3}


def trial_status(failed: bool, last: dict[str, Any] | None, budget_used: bool) -> str:
    """``failed``; ``completed`` (its final result); ``pruned`` (ASHA stopped it: Tune marks the result it
    stopped on ``done``); ``not started`` (no epoch reported); else it was ended from outside —
    ``stopped by budget`` when ``search.time_budget`` ran out, ``interrupted`` otherwise (Ctrl-C, a crash)."""
    last = last or {}
    if failed:
        return FAILED
    if last.get("final"):
        return COMPLETED
    if not last.get("epoch"):
        return NOT_STARTED
    if last.get("done"):
        return PRUNED
    return BUDGET if budget_used else INTERRUPTED


def budget_used(time_budget: float | None, since: float) -> bool:
    """Whether ``search.time_budget`` seconds have run out since ``since`` (Tune's clock, to within a second)."""
    return time_budget is not None and time.time() - since >= time_budget - 1.0


def mlflow_status(status: str) -> str:
    return MLFLOW_STATUS.get(status, "KILLED")
