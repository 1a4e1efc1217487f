"""The ``stacked`` layout: a trial's k fold members as one stacked model in the trial's own process."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from orchestrator.search.folds import (
    FoldEpoch,
    FoldNonFinite,
    FoldResult,
    epoch_report,
    fold_config,
    fold_final,
    held_out_sets,
    last_epoch,
)
from schnet_model import Molecules, TrainingConfig
from schnet_model.nn.compiled import forget_compiled
from schnet_model.nn.family import AnyConfig
from schnet_model.training.stacked import Member, MemberNonFinite, StackedTrainer


class StackedFolds:
    """k fold members trained by one :class:`StackedTrainer` (a :class:`~orchestrator.search.folds.FoldGroup`).

    Args:
        k: folds.
        threads: torch CPU threads of the trial process (its CPU share).
        device: ``cuda`` when the trial holds a GPU share (Ray sets the visible device), else ``cpu``.
    """

    def __init__(self, k: int, threads: int, device: str) -> None:
        self.k, self.threads, self.device = k, max(1, threads), device
        self.trainer: StackedTrainer | None = None
        self.last: list[FoldEpoch | None] = [None] * k

    def setup(self, data: Molecules, folds: list[tuple[np.ndarray, np.ndarray]], tests: dict[str, np.ndarray],
              model_cfg: AnyConfig, train_cfg: TrainingConfig) -> None:
        torch.set_num_threads(self.threads)
        # a reused trial process: the last configuration's compiled kernels would count towards dynamo's limit
        forget_compiled()
        self.data, self.folds = data, folds
        self.tests = held_out_sets(data, tests)
        members = [Member(data.subset(tr), data.subset(va), fold_config(train_cfg, i, self.threads, self.device))
                   for i, (tr, va) in enumerate(folds)]
        self.trainer = StackedTrainer(model_cfg, members, device=self.device)
        self.last = [None] * self.k

    @property
    def mode(self) -> str:
        assert self.trainer is not None
        return self.trainer.mode

    def run_epoch(self) -> list[FoldEpoch]:
        t = self.trainer
        assert t is not None
        try:
            results = t.run_epoch()
        except MemberNonFinite as e:
            raise FoldNonFinite(f"fold {e.member}: {e}") from None
        self.last = [epoch_report(r, self.last[m], t.best_val_loss[m], t.stopped[m], t.epoch[m])
                     for m, r in enumerate(results)]
        return list(self.last)

    def set_horizon(self, epochs_left: float) -> None:
        assert self.trainer is not None
        self.trainer.set_horizon(epochs_left)

    def get_states(self) -> list[dict[str, Any]]:
        t = self.trainer
        assert t is not None
        return [{**t.member_state_dict(m), "stopped": t.stopped[m],
                 "last": last.state() if (last := self.last[m]) else None}
                for m in range(self.k)]

    def load_states(self, states: list[dict[str, Any]]) -> None:
        for m, s in enumerate(states):
            self.load_state(m, s)

    def load_state(self, index: int, state: dict[str, Any]) -> None:
        """Member ``index`` alone from a fold checkpoint (a finalist's fold 0 from its screening)."""
        t = self.trainer
        assert t is not None
        t.load_member_state_dict(index, state)
        t.stopped[index] = bool(state.get("stopped", t.stopped[index]))
        self.last[index] = last_epoch(state)

    def finish(self) -> list[FoldResult]:
        """Every member's best weights → validation and test predictions (all members at once), results."""
        t = self.trainer
        assert t is not None
        refits = t.refit_offsets()
        val_pred = t.predict({m: t.members[m].val for m in range(self.k)}, best=True)
        test_preds = {name: t.predict({m: s.molecules for m in range(self.k)}, best=True)
                      for name, s in self.tests.items()}
        out = []
        for m, (_, va) in enumerate(self.folds):
            out.append(fold_final(m, t.member_model(m), t.cfgs[m], use_forces=t.use_forces, best_epoch=t.best_epoch[m],
                                  best_val_loss=t.best_val_loss[m], val=t.members[m].val, val_idx=np.asarray(va),
                                  val_pred=val_pred[m], tests=self.tests,
                                  test_preds={name: p[m] for name, p in test_preds.items()},
                                  elements=self.data.elements, energy_unit=self.data.energy_unit, refit=refits[m]))
        return out

    def drop(self) -> None:
        """Nothing to release (no actors)."""


__all__ = ["StackedFolds"]
