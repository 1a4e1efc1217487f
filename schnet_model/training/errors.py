"""Training errors the orchestrator reacts to."""

from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf.

    Attributes:
        epoch: 1-based epoch in which it happened.
        step: global optimiser step (0-based) at which it happened.
        value: the loss value.
    """

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"non-finite training loss {value} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


class NonFinitePrediction(RuntimeError):
    """A model predicted NaN/inf: no metric is computed from it (it would be NaN without saying why)."""
