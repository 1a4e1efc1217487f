"""One cross-validation member, run as a Ray actor inside its trial's placement group."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schnet_model import ModelConfig, Molecules, SchNet, Trainer, TrainingConfig, evaluate, save_model
from schnet_model.model_dir import ModelInfo
from schnet_model.training import predict
from schnet_model.training.errors import NonFiniteLossError


class FoldNonFinite(RuntimeError):
    """A fold's loss became NaN/inf; the message names the fold, epoch and step."""


class FoldWorker:
    """Trains fold ``index`` of a trial epoch by epoch.

    Args:
        data: the whole dataset (read-only, shared through the object store).
        index: fold number.
        train_idx, val_idx, test_idx: indices into ``data``.
        model_cfg, train_cfg: the trial's configuration (the seed is offset by the fold index).
        threads: torch CPU threads (the fold's CPU share).

    ``setup`` can be called again to train another configuration in the same process: a reused
    trial keeps its fold actors, which saves their start-up (a new process importing torch).
    """

    def __init__(self, *args: Any) -> None:
        if args:
            self.setup(*args)

    def setup(
        self,
        data: Molecules,
        index: int,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        test_idx: np.ndarray,
        model_cfg: ModelConfig,
        train_cfg: TrainingConfig,
        threads: int,
    ) -> None:
        torch.set_num_threads(max(1, threads))
        self.index = index
        cfg = train_cfg.model_copy(update={"seed": train_cfg.seed + index, "num_threads": max(1, threads)})
        if cfg.device == "auto" or (cfg.device.startswith("cuda") and not torch.cuda.is_available()):
            cfg = cfg.model_copy(update={"device": "cuda" if torch.cuda.is_available() else "cpu"})
        self.val_idx, self.test_idx = np.asarray(val_idx), np.asarray(test_idx)
        self.train, self.val = data.subset(train_idx), data.subset(val_idx)
        self.test = data.subset(test_idx) if len(test_idx) else None
        self.elements, self.energy_unit = data.elements, data.energy_unit
        torch.manual_seed(cfg.seed)
        self.trainer = Trainer(SchNet(model_cfg), self.train, self.val, cfg)
        self.stopped = False

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch (unless early-stopped) and return its metrics."""
        t = self.trainer
        if not self.stopped:
            try:
                r = t.run_epoch()
            except NonFiniteLossError as e:
                raise FoldNonFinite(f"fold {self.index}: {e}") from None
            self.stopped = t.should_stop_early()
            m = {"val_loss": r.val.loss, "val_energy_mae": r.val.energy_mae, "train_loss": r.train_loss, "lr": r.lr,
                 "seconds": r.seconds}
            if r.val.forces_mae is not None:
                m["val_forces_mae"] = r.val.forces_mae
            self.last = m
        else:
            self.last = {**self.last, "seconds": 0.0}
        return {**self.last, "best_val_loss": t.best_val_loss, "stopped": self.stopped, "epoch": t.epoch,
                "node_id": _node_id()}

    def get_state(self) -> dict[str, Any]:
        return {**self.trainer.state_dict(), "stopped": self.stopped, "last": getattr(self, "last", {})}

    def load_state(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.stopped = bool(state.get("stopped", False))
        self.last = dict(state.get("last", {}))

    def finish(self) -> dict[str, Any]:
        """Best weights → test metrics, test and out-of-fold predictions, the model directory's files."""
        t = self.trainer
        t.model.load_state_dict(t.best_state)
        rho, uf = t.cfg.rho, t.use_forces
        out: dict[str, Any] = {"index": self.index, "best_epoch": t.best_epoch, "best_val_loss": t.best_val_loss}
        val_m = evaluate(t.model, self.val, rho, uf, device=t.device)
        out["val"] = val_m.as_dict()
        oof = predict(t.model, self.val, forces=uf, device=t.device)
        out["oof"] = {"idx": self.val_idx, "energy": oof.energy, "forces": oof.forces}
        if self.test is not None:
            out["test"] = evaluate(t.model, self.test, rho, uf, device=t.device).as_dict()
            p = predict(t.model, self.test, forces=uf, device=t.device)
            out["test_pred"] = {"idx": self.test_idx, "energy": p.energy, "forces": p.forces}
        info = ModelInfo(self.energy_unit, self.elements, extra={
            "fold": self.index, "training": t.cfg.model_dump(), "metrics": {"val": out["val"], "test": out.get("test")},
            "best_epoch": t.best_epoch})
        with tempfile.TemporaryDirectory() as d:
            path = save_model(t.model.cpu(), info, Path(d) / "model")
            out["files"] = {p.name: p.read_bytes() for p in path.iterdir()}
        return out


def _node_id() -> str:
    """The Ray node this fold runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def fold_metrics_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Trial metrics from the folds' epoch results: mean/std over folds, each fold's values and Ray node."""
    vals = np.array([r["val_loss"] for r in results])
    m: dict[str, Any] = {
        "val_loss_mean": float(vals.mean()),
        "val_loss_std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
        "train_loss_mean": float(np.mean([r["train_loss"] for r in results])),
        "folds_stopped": float(sum(r["stopped"] for r in results)),
    }
    for i, r in enumerate(results):
        m[f"fold{i}/val_loss"] = r["val_loss"]
        m[f"fold{i}/val_energy_mae"] = r["val_energy_mae"]
        if "val_forces_mae" in r:
            m[f"fold{i}/val_forces_mae"] = r["val_forces_mae"]
        if r.get("node_id"):
            m[f"fold{i}/node_id"] = r["node_id"]
    return m


__all__ = ["FoldNonFinite", "FoldWorker", "fold_metrics_summary"]
