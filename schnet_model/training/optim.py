"""The optimizer: Adam (paper), as torch's fused single-kernel implementation where it exists; its schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from schnet_model.config import TrainingConfig

_FUSED_DEVICES = ("cpu", "cuda")


def make_adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr)`` (default betas 0.9/0.999, eps 1e-8, no weight decay).

    Fused (one kernel over all parameter tensors) when every parameter is a floating-point
    tensor on CPU or CUDA: the same update rule as the default per-tensor loop, equal up to
    rounding, deterministic, and about 5× faster for SchNet's 32 small tensors on CPU
    (1.5 → 0.3 ms a step at paper size) — which matters at 9 atoms, where a whole training
    step takes ≈ 15 ms. Falls back to the default implementation otherwise.
    """
    params = [p for p in params if p.requires_grad]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def make_schedulers(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, steps_per_epoch: int = 1
                    ) -> tuple[torch.optim.lr_scheduler.LRScheduler | None,
                               torch.optim.lr_scheduler.ReduceLROnPlateau | None]:
    """(per-step scheduler, per-epoch plateau scheduler) of ``cfg``; exactly one is not None.

    ``exponential`` (paper): ``lr·max(decay^(step/decay_steps), min_lr/lr)``, stepped after every
    optimiser step; ``cosine``: ``lr·(f + (1−f)·½(1 + cos(π·min(step, T)/T)))`` with ``f = min_lr/lr`` and
    ``T = max_epochs · steps_per_epoch`` (the optimiser steps of a whole run), stepped after every optimiser
    step; ``plateau``: ReduceLROnPlateau on the validation loss, stepped every epoch.
    """
    floor = cfg.min_lr / cfg.lr
    if cfg.scheduler == "exponential":
        decay, every = cfg.lr_decay, cfg.lr_decay_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(decay ** (s / every), floor)), None
    if cfg.scheduler == "cosine":
        total = max(1, cfg.max_epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))), None
    return None, torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
