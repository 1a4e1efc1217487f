"""The live view of a running sweep (a Tune callback drawing a Rich table)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import tune
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.search.outcome import METRIC
from orchestrator.tracking.callback import error_reason
from orchestrator.tracking.statuses import (
    BUDGET,
    COMPLETED,
    PRUNED,
    SCREENED,
    trial_status,
)


class LiveProgress(tune.Callback):
    """Rich live view: trials running/completed/pruned/failed, best so far, elapsed (a Tune callback)."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.total, self.t0 = total, time.time()
        self.best: float | None = None
        self.console = console
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks; consoles and live views hold locks
        return {**self.__dict__, "live": None, "console": None}

    def table(self, trials: list) -> Table:
        counts = {"RUNNING": 0, "PENDING": 0, "TERMINATED": 0, "ERROR": 0, "PAUSED": 0}
        ended = {COMPLETED: 0, PRUNED: 0}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
            if (t.status == "TERMINATED"
                    and (s := trial_status(False, t.last_result, False)) in (*ended, BUDGET, SCREENED)):
                ended[PRUNED if s == PRUNED else COMPLETED] += 1
            v = (t.last_result or {}).get(METRIC)
            if v is not None and np.isfinite(v) and (self.best is None or v < self.best):
                self.best = v
        t = Table(title="sweep progress", show_header=True)
        for c in ("trials", "running", "completed", "pruned", "failed", "best val loss (fold mean)", "elapsed"):
            t.add_column(c, justify="right")
        t.add_row(f"{len(trials)}/{self.total}", str(counts["RUNNING"]), str(ended[COMPLETED]), str(ended[PRUNED]),
                  str(counts["ERROR"]), "–" if self.best is None else f"{self.best:.4g}",
                  f"{time.time() - self.t0:.0f} s")
        return t

    def _refresh(self, trials: list) -> None:
        if self.live is None:
            self.live = Live(self.table(trials), console=self.console or Console(), refresh_per_second=2)
            self.live.start()
        self.live.update(self.table(trials))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if iteration % 20 == 0:
            self._refresh(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._refresh(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._refresh(trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(f"trial {trial.trial_id} failed: {error_reason(trial)}")
        self._refresh(trials)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._say(f"trial {trial.trial_id} failed ({error_reason(trial)}); retrying it from its last checkpoint")

    def _say(self, line: str) -> None:
        (self.console or Console()).print(line, markup=False, highlight=False)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._refresh(trials)
        if self.live is not None:
            self.live.stop()
            self.live = None
