"""Search spaces: fixed values or distributions for ``model.*`` and ``training.*`` keys.

A distribution is a one-key mapping, optionally with a condition::

    lr: {loguniform: [1.0e-4, 3.0e-3]}
    n_interactions: {int: [1, 6]}
    n_filters: {choice: [32, 64, 128]}
    plateau_patience: {int: [5, 30], when: {training.scheduler: plateau}}

Optuna's define-by-run API samples them; a conditional parameter is only suggested when its
condition holds (else the fixed/default value applies).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

KINDS = ("loguniform", "uniform", "int", "logint", "choice")


class Distribution(BaseModel):
    """One searched hyperparameter."""

    model_config = ConfigDict(extra="forbid")

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    logint: tuple[int, int] | None = None
    choice: list[Any] | None = None
    when: dict[str, Any] | None = Field(None, description="condition: {dotted.key: value}")

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in ("loguniform", "uniform", "int_", "logint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of {', '.join(KINDS)}")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs a non-empty list")
        else:
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind.rstrip('_')} bounds must satisfy low < high, got [{lo}, {hi}]")
            if kind in ("loguniform", "logint") and lo <= 0:
                raise ValueError(f"{kind} bounds must be positive, got [{lo}, {hi}]")
        return self

    @property
    def kind(self) -> str:
        for k in ("loguniform", "uniform", "int_", "logint", "choice"):
            if getattr(self, k) is not None:
                return k.rstrip("_")
        raise AssertionError

    def extremes(self) -> list[Any]:
        """Values to validate against the schema: bounds or every choice."""
        if self.kind == "choice":
            return list(self.choice or [])
        return list(getattr(self, "int_" if self.kind == "int" else self.kind))

    def suggest(self, trial: Any, name: str) -> Any:
        """Sample with an ``optuna.Trial``."""
        k = self.kind
        if k == "loguniform":
            return trial.suggest_float(name, *self.loguniform, log=True)
        if k == "uniform":
            return trial.suggest_float(name, *self.uniform)
        if k == "int":
            return trial.suggest_int(name, *self.int_)
        if k == "logint":
            return trial.suggest_int(name, *self.logint, log=True)
        return trial.suggest_categorical(name, self.choice)


    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this distribution can give (a choice, or within the bounds)."""
        if self.kind == "choice":
            return value in (self.choice or [])
        lo, hi = getattr(self, "int_" if self.kind == "int" else self.kind)
        return isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi

    def optuna(self) -> Any:
        """The ``optuna.distributions`` object :meth:`suggest` samples from (to hand Optuna earlier results)."""
        from optuna import distributions as d

        k = self.kind
        if k in ("loguniform", "uniform"):
            lo, hi = getattr(self, k)
            return d.FloatDistribution(lo, hi, log=k == "loguniform")
        if k in ("int", "logint"):
            lo, hi = self.int_ if k == "int" else self.logint
            return d.IntDistribution(lo, hi, log=k == "logint")
        return d.CategoricalDistribution(self.choice)


def is_distribution(value: Any) -> bool:
    """A mapping whose keys name a distribution kind."""
    return isinstance(value, dict) and any(k in value for k in KINDS)


def split_section(section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed values, distribution mappings) of a model/training section."""
    fixed = {k: v for k, v in section.items() if not is_distribution(v)}
    dists = {k: v for k, v in section.items() if is_distribution(v)}
    return fixed, dists


class DefineByRun:
    """Optuna define-by-run function over dotted keys (``training.lr``); honours ``when``.

    A class (not a closure) so that Tune can pickle the searcher into its experiment state.
    """

    def __init__(self, space: dict[str, Distribution], fixed: dict[str, Any]) -> None:
        self.space, self.fixed = space, fixed

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = dict(self.fixed)
        for name, dist in self.space.items():
            if dist.when and any(chosen.get(k) != v for k, v in dist.when.items()):
                continue
            chosen[name] = dist.suggest(trial, name)


define_by_run = DefineByRun
