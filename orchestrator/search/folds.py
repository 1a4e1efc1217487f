"""A trial's k cross-validation members: what each fold reports, and the fold-actor layout.

Two layouts train a trial's folds behind one interface, :class:`FoldGroup`: :class:`ActorFolds` (k
:class:`FoldWorker` Ray actors, one model each) and :class:`orchestrator.search.stacked_folds.StackedFolds` (one
stacked model in the trial's process). Both report the same per-fold dicts and checkpoint each fold in the Trainer's
state format, so a trial checkpointed by one layout resumes in the other.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from orchestrator.tracking import keys
from schnet_model import Molecules, Trainer, TrainingConfig, save_model
from schnet_model.model_dir import ModelInfo
from schnet_model.nn.compiled import forget_compiled
from schnet_model.nn.family import AnyConfig, AnyModel, build_model
from schnet_model.training import NonFiniteLossError, predict
from schnet_model.training.metrics import Predictions, metrics_of
from schnet_model.training.refit import OffsetRefit
from schnet_model.training.trainer import EpochResult, resolve_device


class FoldNonFinite(RuntimeError):
    """A fold's loss became NaN/inf; the message names the fold, epoch and step."""


@dataclass
class HeldOutSet:
    """A named test set as a fold sees it: its molecules and their indices in the sweep's data."""

    molecules: Molecules
    idx: np.ndarray  # [n]


def held_out_sets(data: Molecules, tests: dict[str, np.ndarray]) -> dict[str, HeldOutSet]:
    """The named test sets of ``data`` (index arrays → molecules)."""
    return {name: HeldOutSet(data.subset(idx), np.asarray(idx)) for name, idx in tests.items()}


@dataclass(frozen=True)
class FoldEpoch:
    """What one fold reports after an epoch. A fold stopped early repeats its last epoch's values (``seconds`` 0)."""

    epoch: int
    val_loss: float
    val_energy_mae: float  # energy unit of the data
    val_forces_mae: float | None  # energy unit / Å; None without forces
    val_energy_rmse: float
    val_forces_rmse: float | None
    train_loss: float
    lr: float
    seconds: float
    best_val_loss: float
    stopped: bool
    node_id: str = ""  # the Ray node it ran on ("" outside Ray)
    val_seconds: float = 0.0  # of ``seconds``, predicting the validation set (0: not measured)

    def state(self) -> dict[str, Any]:
        """Plain values for a checkpoint (``torch.load(weights_only=True)`` reads them back)."""
        return asdict(self)


def epoch_report(r: EpochResult | None, last: FoldEpoch | None, best_val_loss: float, stopped: bool, epoch: int
                 ) -> FoldEpoch:
    """One fold's epoch (``r`` None: the fold was stopped before this epoch; ``last`` repeats)."""
    if r is not None:
        return FoldEpoch(epoch, r.val.loss, r.val.energy_mae, r.val.forces_mae, r.val.energy_rmse, r.val.forces_rmse,
                         r.train_loss, r.lr, r.seconds, best_val_loss, stopped, _node_id(), r.val_seconds)
    if last is None:
        raise ValueError("a fold stopped before its first epoch has nothing to report")
    return replace(last, epoch=epoch, seconds=0.0, best_val_loss=best_val_loss, stopped=stopped, node_id=_node_id(),
                   val_seconds=0.0)


def last_epoch(state: dict[str, Any]) -> FoldEpoch | None:
    """The last epoch a fold checkpoint recorded (None before its first)."""
    last = state.get("last")
    return FoldEpoch(**{"val_energy_rmse": math.nan, "val_forces_rmse": None, **last}) if last else None  # older states


@dataclass
class SetPredictions:
    """One fold's predictions on a set of molecules of the sweep's data."""

    idx: np.ndarray  # [n] indices into the sweep's data
    energy: np.ndarray  # [n] energy unit of the data
    forces: np.ndarray | None  # [n_atoms, 3] energy unit / Å


@dataclass
class FoldResult:
    """A fold's final result, from its best weights: metrics, out-of-fold and test predictions, the model's files."""

    index: int
    best_epoch: int
    best_val_loss: float
    val: dict[str, float]  # metrics on its validation fold (Metrics.as_dict)
    oof: SetPredictions  # its validation fold: the out-of-fold predictions
    tests: dict[str, dict[str, float]]  # {test set: metrics}
    test_preds: dict[str, SetPredictions]  # {test set: predictions}
    files: dict[str, bytes]  # the model directory (save_model), file name → bytes
    offset_refit: dict[str, float]  # what refitting the energy references did (OffsetRefit.as_dict)


def fold_final(index: int, model: AnyModel, cfg: TrainingConfig, *, use_forces: bool, best_epoch: int,
               best_val_loss: float, val: Molecules, val_idx: np.ndarray, val_pred: Predictions,
               tests: dict[str, HeldOutSet], test_preds: dict[str, Predictions], elements: list[int], energy_unit: str,
               refit: OffsetRefit) -> FoldResult:
    """A fold's final result from its best model's predictions."""
    val_metrics = metrics_of(val_pred, val, cfg.rho, use_forces).as_dict()
    test_metrics = {name: metrics_of(test_preds[name], t.molecules, cfg.rho, use_forces).as_dict()
                    for name, t in tests.items()}
    info = ModelInfo(energy_unit, elements, extra={
        "fold": index, "training": cfg.model_dump(), "metrics": {"val": val_metrics, **test_metrics},
        "best_epoch": best_epoch, "offset_refit": refit.format()})
    with tempfile.TemporaryDirectory() as d:
        path = save_model(model.cpu(), info, Path(d) / "model")
        files = {p.name: p.read_bytes() for p in path.iterdir()}
    return FoldResult(index, best_epoch, best_val_loss, val_metrics,
                      SetPredictions(val_idx, val_pred.energy, val_pred.forces), test_metrics,
                      {name: SetPredictions(t.idx, test_preds[name].energy, test_preds[name].forces)
                       for name, t in tests.items()},
                      files, refit.as_dict())


def fold_config(train_cfg: TrainingConfig, index: int, threads: int, device: str | None = None) -> TrainingConfig:
    """Fold ``index``'s settings: the trial's, its seed offset by the fold index, the device resolved."""
    dev = str(resolve_device(device or train_cfg.device, cpu_without_cuda=True))
    return train_cfg.model_copy(update={"seed": train_cfg.seed + index, "num_threads": max(1, threads), "device": dev})


class FoldWorker:
    """Trains fold ``index`` of a trial epoch by epoch (a Ray actor of the ``folds`` layout).

    Args:
        data: the whole dataset (read-only, shared through the object store).
        index: fold number.
        train_idx, val_idx: indices into ``data``.
        tests: named test sets, indices into ``data``.
        model_cfg, train_cfg: the trial's configuration (the seed is offset by the fold index).
        threads: torch CPU threads (the fold's CPU share).

    ``setup`` can be called again to train another configuration in the same process: a reused
    trial keeps its fold actors, which saves their start-up (a new process importing torch).
    """

    def __init__(self, *args: Any) -> None:
        if args:
            self.setup(*args)

    def setup(self, data: Molecules, index: int, train_idx: np.ndarray, *, val_idx: np.ndarray,
              tests: dict[str, np.ndarray], model_cfg: AnyConfig, train_cfg: TrainingConfig, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        # a reused actor: the last configuration's compiled kernels would count towards dynamo's limit
        forget_compiled()
        self.index = index
        cfg = fold_config(train_cfg, index, threads)
        self.val_idx = np.asarray(val_idx)
        self.train, self.val = data.subset(train_idx), data.subset(val_idx)
        self.tests = held_out_sets(data, tests)
        self.elements, self.energy_unit = data.elements, data.energy_unit
        torch.manual_seed(cfg.seed)
        self.trainer = Trainer(build_model(model_cfg), self.train, self.val, cfg)
        self.stopped = False
        self.last: FoldEpoch | None = None

    def run_epoch(self) -> FoldEpoch:
        """Train one epoch (unless early-stopped) and return its metrics."""
        t = self.trainer
        r = None
        if not self.stopped:
            try:
                r = t.run_epoch()
            except NonFiniteLossError as e:
                raise FoldNonFinite(f"fold {self.index}: {e}") from None
            self.stopped = t.should_stop_early()
        self.last = epoch_report(r, self.last, t.best_val_loss, self.stopped, t.epoch)
        return self.last

    def set_horizon(self, epochs_left: float) -> None:
        """The schedule ends with ``epochs_left`` more epochs (the trial's time budget: a cosine decays over them, an
        exponential or plateau schedule cools down)."""
        self.trainer.set_horizon(epochs_left)

    def get_state(self) -> dict[str, Any]:
        return {**self.trainer.state_dict(), "stopped": self.stopped, "last": self.last.state() if self.last else None}

    def load_state(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.stopped = bool(state.get("stopped", False))
        self.last = last_epoch(state)

    def finish(self) -> FoldResult:
        """Best weights, energy references refit on the training residuals → validation and test predictions (once
        each), metrics, the model directory's files."""
        t = self.trainer
        refit = t.refit_offsets()
        t.model.load_state_dict(t.best_state)
        uf = t.use_forces
        val_pred = predict(t.model, self.val, forces=uf, device=t.device)
        test_preds = {name: predict(t.model, s.molecules, forces=uf, device=t.device) for name, s in self.tests.items()}
        return fold_final(self.index, t.model, t.cfg, use_forces=uf, best_epoch=t.best_epoch,
                          best_val_loss=t.best_val_loss, val=self.val, val_idx=self.val_idx, val_pred=val_pred,
                          tests=self.tests, test_preds=test_preds, elements=self.elements, energy_unit=self.energy_unit,
                          refit=refit)


def _node_id() -> str:
    """The Ray node this fold runs on ("" outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


class FoldActorPool:
    """The fold actors a trial process keeps between trials: when Tune reuses the process for the next trial
    (``TuneConfig(reuse_actors=True)``), the same placement group's bundles get the same actors (no new processes).
    The trainable owns one (:data:`orchestrator.search.trial.POOL`) and hands it to :class:`ActorFolds`."""

    def __init__(self) -> None:
        self.workers: dict[tuple, list] = {}  # (placement group, k, cpus, gpus) → k FoldWorker actors

    def get(self, k: int, cpus: float, gpus: float) -> list:
        """k actors on the current placement group's fold bundles (1..k), started unless pooled."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.get_current_placement_group()
        key = (pg.id.hex() if pg is not None else None, k, cpus, gpus)
        if key not in self.workers:
            self.drop()
            workers = []
            for i in range(k):
                opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
                if pg is not None:
                    opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                        pg, placement_group_bundle_index=i + 1)
                workers.append(ray.remote(FoldWorker).options(**opts).remote())
            self.workers[key] = workers
        return self.workers[key]

    def drop(self) -> None:
        """Kill the pooled actors (one is gone, or the layout changed: start fresh ones)."""
        import ray

        for workers in self.workers.values():
            for w in workers:
                ray.kill(w)
        self.workers.clear()


class FoldGroup(Protocol):
    """A trial's k fold members, as :func:`orchestrator.search.trial.run_trial` drives them (both layouts).

    ``setup`` is each layout's own (the data by reference for fold actors, by value in the trial's process); then
    one epoch of every fold at a time, the folds' states for a checkpoint, and their final results.
    """

    def run_epoch(self) -> list[FoldEpoch]:
        """One epoch of every fold (each fold's report, in fold order)."""
        ...

    def set_horizon(self, epochs_left: float) -> None:
        """Schedules end with ``epochs_left`` more epochs (what the trial's time budget allows: a cosine decays over
        them, an exponential or plateau schedule cools down)."""
        ...

    def get_states(self) -> list[dict[str, Any]]:
        """Every fold's trainer state (the Trainer's checkpoint format)."""
        ...

    def load_states(self, states: list[dict[str, Any]]) -> None:
        """Every fold from its state (a retried or resumed trial)."""
        ...

    def load_state(self, index: int, state: dict[str, Any]) -> None:
        """Fold ``index`` alone from a fold state (a finalist's fold 0 from its screening)."""
        ...

    def finish(self) -> list[FoldResult]:
        """Each fold's best model, evaluated and serialised."""
        ...

    def drop(self) -> None:
        """Let go of what the group holds so that the next trial starts fresh."""
        ...


class ActorFolds:
    """The ``folds`` layout: k :class:`FoldWorker` actors on the trial's fold bundles, taken from ``pool``."""

    def __init__(self, pool: FoldActorPool, k: int, cpus: float, gpus: float) -> None:
        self.pool = pool
        self.workers = pool.get(k, cpus, gpus)
        self.threads = int(max(1, cpus))

    def setup(self, data_ref, folds: list[tuple[np.ndarray, np.ndarray]], tests: dict[str, np.ndarray],
              model_cfg: AnyConfig, train_cfg: TrainingConfig) -> None:
        import ray

        ray.get([w.setup.remote(data_ref, i, tr, val_idx=va, tests=tests, model_cfg=model_cfg, train_cfg=train_cfg,
                                threads=self.threads)
                 for i, (w, (tr, va)) in enumerate(zip(self.workers, folds, strict=True))])

    def run_epoch(self) -> list[FoldEpoch]:
        import ray

        return ray.get([w.run_epoch.remote() for w in self.workers])

    def set_horizon(self, epochs_left: float) -> None:
        import ray

        ray.get([w.set_horizon.remote(epochs_left) for w in self.workers])

    def get_states(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([w.get_state.remote() for w in self.workers])

    def load_states(self, states: list[dict[str, Any]]) -> None:
        import ray

        ray.get([w.load_state.remote(s) for w, s in zip(self.workers, states, strict=True)])

    def load_state(self, index: int, state: dict[str, Any]) -> None:
        """Fold ``index`` alone from a fold checkpoint (a finalist's fold 0 from its screening)."""
        import ray

        ray.get(self.workers[index].load_state.remote(state))

    def finish(self) -> list[FoldResult]:
        import ray

        return ray.get([w.finish.remote() for w in self.workers])

    def drop(self) -> None:
        """Kill this trial's actors (one is gone: the next setup starts fresh ones)."""
        self.pool.drop()


def objective(rho: float, energy_rmse: float, forces_rmse: float | None) -> float:
    """The CV objective when ρ is searched: ``ρ·E_RMSE² + 3·F_RMSE²`` (the loss's terms with one ρ for every trial;
    3·F_RMSE² is the mean squared force-vector error per atom)."""
    return rho * energy_rmse ** 2 + (0.0 if forces_rmse is None else 3.0 * forces_rmse ** 2)


def fold_metrics_summary(results: list[FoldEpoch], objective_rho: float | None = None) -> keys.TrialResult:
    """The trial's Tune metrics from its folds' epochs: means over folds, and each fold's own values
    (:class:`orchestrator.tracking.keys.TrialResult`). With ``objective_rho`` (ρ is searched) the fold-mean
    validation loss is :func:`objective`, comparable across trials."""
    vals = np.array([r.val_loss if objective_rho is None
                     else objective(objective_rho, r.val_energy_rmse, r.val_forces_rmse)
                     for r in results])
    m: dict[str, Any] = {
        "val_loss_mean": float(vals.mean()),
        "val_loss_std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
        "train_loss_mean": float(np.mean([r.train_loss for r in results])),
        "folds_stopped": float(sum(r.stopped for r in results)),
    }
    per_fold = [{"val_loss": r.val_loss, "val_energy_mae": r.val_energy_mae, "node_id": r.node_id, "lr": r.lr,
                 **({} if r.val_forces_mae is None else {"val_forces_mae": r.val_forces_mae})} for r in results]
    return keys.TrialResult(m, per_fold)


__all__ = ["ActorFolds", "FoldActorPool", "FoldEpoch", "FoldGroup", "FoldNonFinite", "FoldResult", "FoldWorker",
           "SetPredictions", "epoch_report", "fold_config", "fold_final", "fold_metrics_summary", "last_epoch"]
