"""Training of one SchNet: Adam, paper learning-rate decay, early stopping, budgets.

The :class:`Trainer` advances one epoch at a time (``run_epoch``) and exposes
``state_dict``/``load_state_dict`` so a caller (a CLI, a Ray actor) can report, checkpoint and
resume between epochs; ``fit`` is the plain loop around it, and ends by refitting the energy
references on the training residuals (:meth:`Trainer.refit_offsets`, kept when it lowers the
validation energy MAE).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from schnet_model.config import TrainingConfig
from schnet_model.data.molecules import Molecules, iterate_batches
from schnet_model.nn.family import AnyModel
from schnet_model.nn.offsets import fit_offsets
from schnet_model.training.errors import NonFiniteLossError, NonFinitePrediction
from schnet_model.training.loss import energy_force_loss
from schnet_model.training.metrics import Metrics, evaluate, predict
from schnet_model.training.optim import make_adam, make_schedulers, set_horizon
from schnet_model.training.refit import ATOMREF, OffsetRefit, plan_refit


def resolve_device(name: str, cpu_without_cuda: bool = False) -> torch.device:
    """The one device rule: ``'auto'`` → cuda when available, else cpu; ``cuda…`` on a machine (or in a Ray
    worker) without CUDA → cpu when ``cpu_without_cuda``, else as asked (an error at first use)."""
    if name == "auto" or (cpu_without_cuda and name.startswith("cuda") and not torch.cuda.is_available()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class EpochResult:
    """What one epoch produced."""

    epoch: int  # 1-based
    step: int  # optimiser steps so far
    train_loss: float
    val: Metrics
    lr: float
    seconds: float  # the whole epoch, validation included
    improved: bool
    val_seconds: float = 0.0  # of it, predicting the validation set (what finalising a run costs per molecule)


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`."""

    history: list[EpochResult] = field(default_factory=list)
    stop_reason: str = ""
    best_epoch: int = 0
    best_val_loss: float = math.inf  # as monitored in training (before the refit of the energy references)
    offset_refit: OffsetRefit | None = None  # the final refit of the energy references (None: not asked)


class Trainer:
    """Trains ``model`` on ``train``, monitoring ``val``.

    Per-element energy references and the scale are fitted on ``train`` at construction
    (``fit_offsets=False`` keeps the model's). Training uses float32 weights; energies and the
    loss are float64.

    Args:
        model: a module of a model family (:class:`~schnet_model.nn.schnet.SchNet`, PaiNN).
        train: training molecules (energies required).
        val: validation molecules.
        config: optimisation settings (paper defaults).
        fit_offsets: fit the energy references on ``train``.
    """

    def __init__(
        self, model: AnyModel, train: Molecules, val: Molecules, config: TrainingConfig, fit_offsets: bool = True
    ) -> None:
        if train.E is None:
            raise ValueError(f"{train.name}: training needs energies")
        if train.energy_unit != val.energy_unit:
            raise ValueError(f"train data in {train.energy_unit} but validation data in {val.energy_unit}")
        self.cfg = config
        self.device = resolve_device(config.device)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.model = model.to(self.device)
        self.model.compile_after = config.compile_after
        self.train_data, self.val_data = train, val
        self.cutoff = model.config.cutoff
        self.use_forces = train.has_forces if config.use_forces is None else config.use_forces
        if self.use_forces and not train.has_forces:
            raise ValueError(f"{train.name}: training.use_forces is true but the dataset has no forces")
        if fit_offsets:
            ref, scale = fit_offsets_fn(train, model.config.max_z)
            self.model.offsets.set(ref, scale)
        self.optimizer = make_adam(self.model.parameters(), config.lr)
        self.step_scheduler, self.plateau = make_schedulers(self.optimizer, config, steps_per_epoch(train, config))
        self.rng = np.random.default_rng(config.seed)
        self.epoch = 0
        self.step = 0
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = copy.deepcopy(self.model.state_dict())
        self.epochs_without_improvement = 0

    # -- one epoch ------------------------------------------------------------------------
    def run_epoch(self) -> EpochResult:
        """Train over the training set once, then validate."""
        t0 = time.perf_counter()
        self.epoch += 1
        self.model.train()
        total, count = 0.0, 0
        dtype = next(self.model.parameters()).dtype
        batches = iterate_batches(self.train_data, self.cfg.batch_size, self.cutoff, shuffle=True, rng=self.rng,
                                  dtype=dtype)
        for batch in batches:
            batch = batch.to(self.device)
            pred = self.model(batch, forces=self.use_forces, create_graph=True)
            loss = energy_force_loss(pred, batch, self.cfg.rho, self.use_forces)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(self.epoch, self.step, float(loss.detach()))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            if self.step_scheduler is not None:
                self.step_scheduler.step()
            self.step += 1
            total += float(loss.detach()) * batch.n_mols
            count += batch.n_mols
        t_val = time.perf_counter()
        try:
            val = evaluate(self.model, self.val_data, self.cfg.rho, self.use_forces, device=self.device)
        except NonFinitePrediction:  # the weights diverged without a non-finite training loss
            raise NonFiniteLossError(self.epoch, self.step, math.nan) from None
        val_seconds = time.perf_counter() - t_val
        if not math.isfinite(val.loss):
            raise NonFiniteLossError(self.epoch, self.step, val.loss)
        if self.plateau is not None:
            self.plateau.step(val.loss)
        improved = val.loss < self.best_val_loss - self.cfg.early_stopping_min_delta
        if improved:
            self.best_val_loss, self.best_epoch = val.loss, self.epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return EpochResult(
            epoch=self.epoch,
            step=self.step,
            train_loss=total / max(count, 1),
            val=val,
            lr=self.optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - t0,
            improved=improved,
            val_seconds=val_seconds,
        )

    def set_horizon(self, epochs_left: float) -> bool:
        """The schedule ends with the steps taken and ``epochs_left`` more epochs (what a time budget still lets this
        run train): a cosine decays over them, an exponential cools down over their last ``cooldown``
        (:func:`~schnet_model.training.optim.set_horizon`), as does a plateau schedule; False without a cooldown."""
        return set_horizon(self.step_scheduler or self.plateau, self.cfg, steps_per_epoch(self.train_data, self.cfg),
                           epochs_left)

    def should_stop_early(self) -> bool:
        """True once ``early_stopping_patience`` epochs passed without improvement."""
        p = self.cfg.early_stopping_patience
        return p is not None and self.epochs_without_improvement >= p

    # -- the loop ------------------------------------------------------------------------
    def fit(self, on_epoch: Callable[[EpochResult], bool | None] | None = None, refit: bool = True) -> TrainResult:
        """Train until ``max_epochs``, ``max_time``, early stopping, or ``on_epoch`` returns False.

        The best-validation weights are loaded back into the model at the end; then, with ``refit``,
        the energy references are refit on them (:meth:`refit_offsets`, in ``result.offset_refit``).
        """
        result = TrainResult()
        start = time.perf_counter()
        while True:
            if self.epoch >= self.cfg.max_epochs:
                result.stop_reason = f"max_epochs ({self.cfg.max_epochs}) reached"
                break
            r = self.run_epoch()
            result.history.append(r)
            if on_epoch is not None and on_epoch(r) is False:
                result.stop_reason = "stopped by caller"
                break
            if self.should_stop_early():
                result.stop_reason = (
                    f"early stopping: no improvement for {self.cfg.early_stopping_patience} epochs"
                )
                break
            if self.cfg.max_time is not None:
                spent = time.perf_counter() - start
                if spent >= self.cfg.max_time:
                    result.stop_reason = f"time budget ({self.cfg.max_time:g} s) used"
                    break
                # the epochs the budget still allows at this run's pace: the schedule ends with them
                self.set_horizon(math.ceil((self.cfg.max_time - spent) * len(result.history) / spent))
        self.model.load_state_dict(self.best_state)
        result.best_epoch, result.best_val_loss = self.best_epoch, self.best_val_loss
        if refit:
            result.offset_refit = self.refit_offsets()
        return result

    def refit_offsets(self, batch_size: int = 128) -> OffsetRefit:
        """Refit the per-element energy references of the best weights on their training residuals.

        Predicts the energies (no forces) of the training and validation sets with ``best_state``;
        the least-squares correction of ``atomref`` (:func:`~schnet_model.training.refit.plan_refit`)
        is kept when it lowers the validation energy MAE, and then written into ``best_state`` and
        the live model (which share their references: training never changes them), so ``fit``'s
        final load, :meth:`state_dict` and a resumed run keep it. ``best_val_loss`` stays the value
        monitored in training. Call it once the weights are final (the end of ``fit`` does).
        """
        model = copy.deepcopy(self.model)
        model._fast_calls = 0  # the copy counts its own calls: the live model's count is untouched, a few stay eager
        model.load_state_dict(self.best_state)
        with torch.no_grad():
            e_train = predict(model, self.train_data, batch_size, forces=False, device=self.device).energy  # [n_train]
            e_val = predict(model, self.val_data, batch_size, forces=False, device=self.device).energy  # [n_val]
        delta, result = plan_refit(self.train_data, self.val_data, e_train, e_val, self.model.config.max_z)
        if result.kept:
            old = self.best_state[ATOMREF]  # [max_z] float64
            new = old + torch.as_tensor(delta, dtype=old.dtype, device=old.device)
            self.best_state = {**self.best_state, ATOMREF: new}  # a new dict: a loaded checkpoint's is not edited
            with torch.no_grad():
                self.model.offsets.atomref.copy_(new)
        return result

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue training exactly (tensors and plain data only)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step_scheduler": None if self.step_scheduler is None else self.step_scheduler.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "rng": self.rng.bit_generator.state,
            "epoch": self.epoch,
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.step_scheduler is not None and state["step_scheduler"] is not None:
            self.step_scheduler.load_state_dict(state["step_scheduler"])
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])
        self.rng.bit_generator.state = state["rng"]
        for k in ("epoch", "step", "best_val_loss", "best_epoch", "epochs_without_improvement"):
            setattr(self, k, state[k])
        self.best_state = state["best_state"]


def steps_per_epoch(train: Molecules, cfg: TrainingConfig) -> int:
    """Optimiser steps in one epoch over ``train`` (the last batch may be partial)."""
    return max(1, math.ceil(len(train) / cfg.batch_size))


def fit_offsets_fn(train: Molecules, max_z: int) -> tuple[np.ndarray, float]:
    """Fit energy references and scale on a training set (see :func:`fit_offsets`)."""
    if max(train.elements) >= max_z:
        raise ValueError(f"{train.name}: atomic number {max(train.elements)} ≥ model.max_z={max_z}")
    return fit_offsets(train.Z, train.atom_ptr, train.E, train.F, max_z)  # type: ignore[arg-type]
