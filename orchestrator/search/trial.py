"""The Tune trainable: one trial = one configuration = k fold members (stacked, or fold actors in parallel)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from orchestrator.search.context import TestLabels, TrialContext, finish_seconds
from orchestrator.search.folds import (
    ActorFolds,
    FoldActorPool,
    FoldGroup,
    FoldNonFinite,
    FoldResult,
    fold_metrics_summary,
    objective,
)
from orchestrator.search.outcome import METRIC, SCREEN_SCORE
from orchestrator.search.plan import extrapolate
from orchestrator.search.stacked_folds import StackedFolds
from orchestrator.tracking import keys
from orchestrator.tracking.statuses import BUDGET_STOPPED, NOT_STARTED_FLAG, SCREEN
from schnet_model import TrainingConfig
from schnet_model.nn.family import AnyConfig
from schnet_model.training.metrics import mae_rmse
from schnet_model.training.trainer import resolve_device

NONFINITE_MARKER = "nonfinite.txt"


POOL = FoldActorPool()  # this trial process's fold actors, kept for the next trial Tune runs in it (reuse_actors)


PROGRESS_JSON = "progress.json"  # a checkpoint's trial-level progress: epoch, training seconds, learning curve


def _write_states(group, d: Path, progress: dict[str, Any]) -> None:
    for i, state in enumerate(group.get_states()):
        torch.save(state, d / f"fold_{i}.pt")
    (d / PROGRESS_JSON).write_text(json.dumps(progress))


def _load_states(group, d: Path, k: int) -> dict[str, Any]:
    """Load the folds' states; the trial's progress (a checkpoint of an older version: fold 0's epoch, no curve)."""
    states = [torch.load(d / f"fold_{i}.pt", weights_only=True) for i in range(k)]
    group.load_states(states)
    if (d / PROGRESS_JSON).is_file():
        return json.loads((d / PROGRESS_JSON).read_text())
    return {"epoch": int(states[0]["epoch"]), "train_seconds": 0.0, "curve": []}


def _ensemble_metrics(finals: list[FoldResult], labels: dict[str, TestLabels]) -> dict[str, float]:
    """Errors of the fold-mean prediction on every named test set."""
    out = {}
    for name, ref in labels.items():
        preds = [f.test_preds[name] for f in finals]
        e = np.mean([p.energy for p in preds], axis=0)  # [n]
        out[keys.ensemble_mae(name, "energy")] = mae_rmse(e - ref.energy)[0]
        if preds[0].forces is not None and ref.forces is not None:
            f = np.mean([p.forces for p in preds], axis=0)  # [n_atoms, 3]
            out[keys.ensemble_mae(name, "forces")] = mae_rmse(f - ref.forces)[0]
    return out


def _best_val_loss_mean(finals: list[FoldResult], objective_rho: float | None) -> float:
    """The trial's CV objective: its folds' best validation losses, or (ρ searched) the objective of their final
    validation errors."""
    if objective_rho is None:
        return float(np.mean([f.best_val_loss for f in finals]))
    return float(np.mean([objective(objective_rho, f.val["energy_rmse"], f.val.get("forces_rmse")) for f in finals]))


def _write_final(d: Path, finals: list[FoldResult], params: dict[str, Any], summary: dict[str, float]) -> None:
    for f in finals:
        fold_dir = d / f"fold_{f.index}"
        (fold_dir / "model").mkdir(parents=True)
        for name, blob in f.files.items():
            (fold_dir / "model" / name).write_bytes(blob)
        (fold_dir / "result.json").write_text(json.dumps(
            {"val": f.val, "tests": f.tests, "best_epoch": f.best_epoch, "best_val_loss": f.best_val_loss,
             "offset_refit": f.offset_refit}))
    arrays: dict[str, np.ndarray] = {
        keys.prediction("oof", "idx"): np.concatenate([f.oof.idx for f in finals]),
        keys.prediction("oof", "fold"): np.concatenate([np.full(len(f.oof.idx), f.index) for f in finals]),
        keys.prediction("oof", "energy"): np.concatenate([f.oof.energy for f in finals]),
    }
    if finals[0].oof.forces is not None:
        arrays[keys.prediction("oof", "forces")] = np.concatenate([f.oof.forces for f in finals])
    for name, first in finals[0].test_preds.items():
        arrays[keys.prediction(name, "idx")] = first.idx
        arrays[keys.prediction(name, "energy")] = np.stack([f.test_preds[name].energy for f in finals])  # [k, n]
        if first.forces is not None:
            # [k, n_atoms, 3]
            arrays[keys.prediction(name, "forces")] = np.stack([f.test_preds[name].forces for f in finals])
    np.savez(d / keys.PREDICTIONS, **arrays)
    (d / keys.TRIAL_JSON).write_text(json.dumps({"params": params, "summary": summary}))


def _final_checkpoint(trial_dir: Path) -> Path | None:
    """This trial's final checkpoint (the one with ``trial.json``), when an earlier run of it completed.

    The driver records a trial's end in MLflow at once, but Tune snapshots its own state (what ``--resume``
    restores) every second: a driver killed in between restores the trial from an earlier checkpoint. Its final
    checkpoint is already in the trial directory, so the trial reports it again instead of training again.
    """
    done = sorted(d for d in trial_dir.glob("checkpoint_*") if (d / keys.TRIAL_JSON).is_file())
    return done[-1] if done else None


def config_key(params: dict[str, Any]) -> str:
    """A configuration as a string (the same for the same values, whatever the keys' order)."""
    return json.dumps(params, sort_keys=True, default=str)


def _group(ctx: TrialContext, model_cfg: AnyConfig, train_cfg: TrainingConfig) -> FoldGroup:
    """The trial's fold members, set up for this configuration: stacked in this process, or fold actors."""
    res, k = ctx.spec.resources, ctx.k
    if ctx.layout == "stacked":
        device = str(resolve_device("cuda" if res.gpus_per_trial else "cpu", cpu_without_cuda=True))
        group = StackedFolds(k, max(1, round(res.trial_cpus(k))), device)
        group.setup(ray.get(ctx.data.ref), ctx.folds, ctx.data.tests, model_cfg, train_cfg)
        return group
    for attempt in (0, 1):
        group = ActorFolds(POOL, k, res.cpus_per_fold, res.gpus_per_fold)
        try:
            group.setup(ctx.data.ref, ctx.folds, ctx.data.tests, model_cfg, train_cfg)
            return group
        except ray.exceptions.RayActorError:  # a pooled actor is gone: replace the pool once
            POOL.drop()
            if attempt:
                raise
    raise AssertionError("unreachable")


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Train the k folds of one configuration, reporting fold-mean metrics every epoch.

    ``ctx`` (:class:`~orchestrator.search.context.TrialContext`, shared through the object store) holds the phase's
    spec, folds and data; with a time budget its ``clock`` makes the trial finalise its best fold states (models saved
    and evaluated, flagged ``budget_stopped``) when its time is up, instead of being cut off with nothing kept.
    """
    t_begin = time.perf_counter()
    clock = ctx.clock
    if clock.no_time_to_start():  # the budget ends before one epoch could: leave the slot (the trial is "not started")
        tune.report({METRIC: float("nan"), SCREEN_SCORE: float("nan"), "epoch": 0, NOT_STARTED_FLAG: True})
        return
    spec = ctx.spec
    trial_dir = Path(tune.get_context().get_trial_dir())
    marker = trial_dir / NONFINITE_MARKER
    if marker.exists():  # a retry of a diverged configuration: fail at once, it would diverge again
        raise FoldNonFinite(marker.read_text())
    if (final := _final_checkpoint(trial_dir)) is not None:  # it finished before the driver died (see below)
        tune.report(json.loads((final / keys.TRIAL_JSON).read_text())["summary"],
                    checkpoint=tune.Checkpoint.from_directory(final))
        return
    params = {k: v for k, v in config.items()}
    model_cfg, train_cfg = spec.materialize(params)
    if ctx.screen or not clock.compile_pays(time.time()):  # torch.compile (5–42 s) would not pay in so short a run
        train_cfg = train_cfg.model_copy(update={"compile_after": None})
    if clock.to_the_end:  # what the final rung's share does not use is lost: train on, the best epoch's weights kept
        train_cfg = train_cfg.model_copy(update={"early_stopping_patience": None})
    max_epochs, k = ctx.max_epochs, ctx.k
    group = _group(ctx, model_cfg, train_cfg)
    progress: dict[str, Any] = {"epoch": 0, "train_seconds": 0.0, "curve": []}
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retried or resumed trial: its folds, and its training so far (a screening allotment)
        with ckpt.as_directory() as d:
            progress = _load_states(group, Path(d), k)
    elif (warm := ctx.warm.get(config_key(params))) is not None:  # a finalist: fold 0 from its screening
        with warm.as_directory() as d:
            group.load_state(0, torch.load(Path(d) / "fold_0.pt", weights_only=True))
    epoch, train_seconds = int(progress["epoch"]), float(progress["train_seconds"])
    curve: list[tuple[float, float]] = [tuple(p) for p in progress["curve"]]  # (training seconds, val loss) per epoch
    startup = None
    started = time.time()
    walls: list[float] = []  # wall seconds of each epoch of this run of the trial
    cpus = spec.resources.trial_cpus(k)
    n_train, n_val = max(len(tr) for tr, _ in ctx.folds), max(len(va) for _, va in ctx.folds)
    n_test = sum(len(idx) for idx in ctx.data.tests.values())
    try:
        while epoch < max_epochs:
            epoch += 1
            t_epoch = time.perf_counter()
            w_epoch = time.time()
            results = group.run_epoch()
            if startup is None:  # actor start-up and data slicing happen before the first epoch's work
                startup = t_epoch - t_begin + (time.perf_counter() - t_epoch) - max(r.seconds for r in results)
            train_seconds += max(r.seconds for r in results)  # folds run in parallel (or stacked)
            report = fold_metrics_summary(results, ctx.objective_rho).with_trial(
                epoch=epoch, startup_seconds=startup, train_seconds=train_seconds, cpus=cpus)
            curve.append((train_seconds, report.trial[METRIC]))
            if ctx.screen:  # what ranks it: the loss its curve reaches at the final rung's training per fold
                report = report.with_trial(**{SCREEN_SCORE: extrapolate(curve, clock.horizon or 0.0) or float("nan")})
            if isinstance(group, StackedFolds):  # how the stacked step runs (CUDA graph or eager, and why)
                report = report.with_trial(step_mode=group.mode)
            last_epoch = time.time() - w_epoch
            walls.append(last_epoch)
            finish = finish_seconds(max(r.val_seconds for r in results), n_train, n_val, n_test)  # its finalisation
            if (left := clock.epochs_left(
                    started=started, epoch=epoch, epoch_wall=float(np.median(walls[-5:])),
                    epoch_train=train_seconds / epoch, finish=finish)) is not None:  # decay over the epochs it gets
                group.set_horizon(left)
            out_of_time = clock.out_of_time(started, last_epoch, finish)
            spent = clock.allotment_spent(train_seconds, max(r.seconds for r in results))
            if epoch >= max_epochs or all(r.stopped for r in results) or out_of_time or spent:
                finals = group.finish()
                flags = {"final": True, SCREEN: ctx.screen,
                         BUDGET_STOPPED: out_of_time and epoch < max_epochs and not all(r.stopped for r in results)}
                summary = report.with_trial(
                    **_ensemble_metrics(finals, ctx.data.labels), **flags,
                    best_val_loss_mean=_best_val_loss_mean(finals, ctx.objective_rho)).with_folds(
                    [{keys.fold_metric(name, key): v for name, m in f.tests.items() for key, v in m.items()}
                     for f in finals]).flat()
                with tempfile.TemporaryDirectory() as d:
                    _write_final(Path(d), finals, params, summary)
                    _write_states(group, Path(d), {"epoch": epoch, "train_seconds": train_seconds, "curve": curve})
                    tune.report(summary, checkpoint=tune.Checkpoint.from_directory(d))
                return
            if epoch % spec.search.checkpoint_every == 0:
                with tempfile.TemporaryDirectory() as d:
                    _write_states(group, Path(d), {"epoch": epoch, "train_seconds": train_seconds, "curve": curve})
                    tune.report(report.flat(), checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(report.flat())
    except FoldNonFinite as e:  # stacked: raised here
        marker.write_text(str(e))
        raise
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), Exception) else e
        if isinstance(cause, FoldNonFinite):
            marker.write_text(str(cause))
            raise FoldNonFinite(str(cause)) from None
        raise
    except ray.exceptions.RayActorError:  # a fold actor died (node lost, OOM): start fresh ones on retry
        POOL.drop()
        raise
