"""A sweep's own record, ``sweeps/NAME/sweep.json`` (:class:`SweepState`): what ``--resume`` and ``--more`` continue
from, written by the driver (:mod:`orchestrator.search.driver`) and a budget plan's rungs
(:mod:`orchestrator.search.phases`)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from schnet_model.files import write_text

SWEEP_JSON = "sweep.json"
Status = Literal["running", "interrupted", "finished"]


class SweepStateError(ValueError):
    """A ``sweep.json`` that is not a sweep's record; one line naming the file."""


@dataclass
class SweepState:
    """Where a sweep stands. Unknown keys in an older or newer file are ignored; missing optional ones default."""

    name: str  # the sweep's name: the spec's name and its start time (NAME-YYYYmmdd-HHMMSS)
    spec_name: str
    parent_run_id: str  # the MLflow sweep run
    tracking_uri: str
    experiment: str  # the MLflow experiment
    created: float  # time.time() when it started
    status: Status = "running"
    tune_experiments: list[str] = field(default_factory=list)  # the first, then a plan's final rung or extensions
    plan: dict[str, Any] | None = None  # a budget plan (BudgetPlan.as_dict)
    plan_started: float | None = None  # time.time() when the plan was made
    rungs: dict[str, dict[str, float]] = field(default_factory=dict)  # rung → {"planned_s", "measured_s"}
    screened_costs: list[dict[str, Any]] = field(default_factory=list)  # each screened configuration's epoch cost

    def __post_init__(self) -> None:
        if not self.tune_experiments:
            self.tune_experiments = [self.name]

    @classmethod
    def load(cls, path: Path) -> SweepState:
        """Read ``path``; :class:`SweepStateError` when it is not a sweep's record."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SweepStateError(f"{path}: not a readable sweep record ({e})") from None
        if not isinstance(d, dict):
            raise SweepStateError(f"{path}: not a sweep record (expected a JSON object)")
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in d]
        if missing:
            raise SweepStateError(f"{path}: not a sweep record (missing {', '.join(missing)})")
        return cls(**{k: v for k, v in d.items() if k in known})

    @staticmethod
    def status_of(path: Path) -> str | None:
        """The status a ``sweep.json`` records, or None when it records none (or is unreadable)."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return d.get("status") if isinstance(d, dict) else None

    def save(self, sweep_dir: Path) -> None:
        """Write ``sweep_dir/sweep.json`` atomically."""
        write_text(Path(sweep_dir) / SWEEP_JSON, json.dumps(asdict(self), indent=2))


def new_sweep_name(spec_name: str) -> str:
    """A new sweep's default name: the spec's name and the time, ``NAME-YYYYmmdd-HHMMSS``."""
    return f"{spec_name}-{datetime.now():%Y%m%d-%H%M%S}"


def check_sweep_name(name: str) -> None:
    """:class:`SweepStateError` unless ``name`` can name a sweep's directory under the storage root."""
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise SweepStateError(f"--name {name}: expected a sweep's name, without path separators (sweep list shows "
                              "them)")


__all__ = ["SWEEP_JSON", "SweepState", "SweepStateError", "check_sweep_name", "new_sweep_name"]
