"""A sweep's Tune experiments: one phase each (the search, an extension, a budget plan's screening and final rungs),
run or restored by :class:`PhaseRunner`; :func:`run_planned` runs a time budget's plan
(:mod:`orchestrator.search.plan`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from rich.console import Console

from orchestrator.search.context import FINALISE_GRACE, TrialClock, TrialContext, TrialData
from orchestrator.search.cost import EpochCost, data_cost, describe
from orchestrator.search.outcome import METRIC, SCREEN_SCORE, TrialSummary, summarize
from orchestrator.search.plan import (
    BudgetPlan,
    costliest,
    is_config,
    make_plan,
    measure_fold_epoch,
    top_configs,
)
from orchestrator.search.progress import LiveProgress
from orchestrator.search.state import SweepState
from orchestrator.search.storage import repair_checkpoints, tune_storage
from orchestrator.search.trial import config_key
from orchestrator.spec.space import define_by_run
from orchestrator.spec.sweep import SchedulerConfig, SweepSpec
from orchestrator.tracking.callback import MlflowTracker
from orchestrator.tracking.statuses import (
    INTERRUPTED,
    SCREENED,
    budget_used,
)
from orchestrator.tracking.store import Store


@dataclass(frozen=True)
class Phase:
    """One Tune experiment of a sweep: its configurations, folds, epochs, scheduler and clock."""

    experiment: str
    spec: SweepSpec  # resources made explicit for these trials' folds
    folds: list[tuple[np.ndarray, np.ndarray]]  # the folds each trial trains (fold 0 alone when screening)
    num_samples: int
    max_epochs: int
    asha: bool = True  # the spec's ASHA scheduler (when it has one), else FIFO
    points: list[dict[str, Any]] | None = None  # configurations evaluated first (all of them when num_samples = len)
    clock: TrialClock = field(default_factory=TrialClock)
    tune_budget: float | None = None  # Tune's own time limit (a backstop: trials finalise themselves before it)
    screen: bool = False  # a screening rung: its trials are "screened", never the best trial
    optuna_seed: int = 0
    warm: list[TrialSummary] = field(default_factory=list)  # earlier trials the searcher is told first (--more)
    last_start: float | None = None  # no trial starts after this time.time() (a screening rung's share)
    # config_key → the screening checkpoint its fold 0 continues
    warm_folds: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """What the searcher is told: a screening trial's extrapolated loss, else the fold-mean validation loss."""
        return SCREEN_SCORE if self.screen else METRIC


class TuneFailure(RuntimeError):
    """Tune itself stopped the experiment (not a trial's failure, which Tune retries and records); one line."""


LAUNCH_DEADLINES: dict[str, float] = {}
"""Experiment name → the time after which its searcher starts no trial. Kept outside the searcher because Tune
pickles the searcher into its experiment state, and a resumed rung has a new deadline."""


class LaunchWindow(ConcurrencyLimiter):
    """Ray's concurrency limit, and no new trial after the experiment's last start (:data:`LAUNCH_DEADLINES`): a
    screening rung stops launching configurations when its share of the budget could not pay for another. The
    first ``max_concurrent`` start whatever the clock (Ray's own start-up may take longer than planned on a busy
    machine, and a rung with nothing screened would leave the final rung nothing to train)."""

    def __init__(self, searcher, max_concurrent: int, experiment: str) -> None:
        super().__init__(searcher, max_concurrent)
        self.experiment = experiment
        self.suggested = 0

    def suggest(self, trial_id: str):
        last = LAUNCH_DEADLINES.get(self.experiment)
        if last is not None and time.time() > last and self.suggested >= self.max_concurrent:
            return Searcher.FINISHED
        out = super().suggest(trial_id)
        if isinstance(out, dict):
            self.suggested += 1
        return out


class PhaseRunner:
    """Runs (or restores) the Tune experiments of one sweep, each with its own trainable, tracker and view."""

    def __init__(self, spec: SweepSpec, store: Store, state: SweepState, *, console: Console, data: TrialData,
                 test_sets: list[str]) -> None:
        self.spec, self.store, self.name, self.parent = spec, store, state.name, state.parent_run_id
        self.uri, self.experiment = state.tracking_uri, state.experiment
        self.console, self.data, self.test_sets = console, data, test_sets

    def trainable(self, phase: Phase):

        from orchestrator.search.trial import run_trial

        res, k = phase.spec.resources, len(phase.folds)
        ctx = TrialContext(self.data, phase.spec.model_dump_json(), phase.folds, clock=phase.clock, screen=phase.screen,
                           warm=phase.warm_folds)
        return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                   tune.PlacementGroupFactory(res.bundles(k), strategy=res.placement_strategy))

    def restored(self, experiment: str) -> list[TrialSummary]:
        """The trials of an earlier, finished experiment of this sweep."""

        phase = Phase(experiment, self.spec, [(np.arange(1), np.arange(1))], 1, 1)
        return summarize(tune.Tuner.restore(f"{tune_storage(self.spec)}/{experiment}", trainable=self.trainable(phase))
                         .get_results(), self.test_sets)

    def run(self, phase: Phase, restore: bool) -> tuple[list[TrialSummary], bool]:
        """Run the phase (or continue it after an interruption); its trials, and whether the budget ran out."""
        from optuna.samplers import TPESampler
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search.optuna import OptunaSearch

        spec, k = phase.spec, len(phase.folds)
        self.console.print(f"trial layout: {spec.resources.describe(k)}")
        trainable = self.trainable(phase)
        if phase.last_start is not None:
            LAUNCH_DEADLINES[phase.experiment] = phase.last_start
        if restore and not tune.Tuner.can_restore(f"{tune_storage(spec)}/{phase.experiment}"):
            restore = False  # killed between naming this experiment in sweep.json and Tune's first snapshot of it
        if restore:
            repair_checkpoints(f"{tune_storage(spec)}/{phase.experiment}")  # a driver killed mid-checkpoint
            tuner = tune.Tuner.restore(f"{tune_storage(spec)}/{phase.experiment}", trainable=trainable,
                                       resume_unfinished=True, resume_errored=True)
        else:
            sched = spec.search.scheduler
            if phase.asha and isinstance(sched, SchedulerConfig) and sched.asha is not None:
                scheduler = ASHAScheduler(time_attr="training_iteration", max_t=phase.max_epochs,
                                          grace_period=min(sched.asha.grace_period, phase.max_epochs),
                                          reduction_factor=sched.asha.reduction_factor)
            else:
                scheduler = FIFOScheduler()
            # Optuna evaluates ``points`` first: a final rung has as many trials as points, so they are all it runs
            searcher = OptunaSearch(space=define_by_run(spec.space(), spec.fixed()), metric=phase.metric, mode="min",
                                    points_to_evaluate=phase.points, sampler=TPESampler(seed=phase.optuna_seed))
            if phase.warm:
                told = warm_start(searcher, spec.space(), phase.warm)
                self.console.print(f"extending sweep {self.name} by {phase.num_samples} trials; the searcher knows "
                                   f"the {told} earlier trials' results")
            search = LaunchWindow(searcher, spec.search.max_concurrent, phase.experiment)
            tracker = MlflowTracker(self.uri, self.experiment, sweep_id=self.name, parent_run_id=self.parent, k=k,
                                    time_budget=spec.search.time_budget)
            callbacks = [tracker, LiveProgress(phase.num_samples, self.console)]
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric=phase.metric, mode="min", search_alg=search, scheduler=scheduler,
                                            num_samples=phase.num_samples, time_budget_s=phase.tune_budget,
                                            reuse_actors=True),
                run_config=tune.RunConfig(name=phase.experiment, storage_path=tune_storage(spec), callbacks=callbacks,
                                          verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        t_fit = time.time()
        try:
            results = tuner.fit()  # Ctrl-C: Tune stops its trials, saves its state and returns
        except Exception as e:  # Tune's own error (its periodic snapshot, ≤ 10 s old, is what --resume continues)
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            raise TuneFailure(lines[-1][:500] if lines else type(e).__name__) from None
        budget_ran_out = budget_used(phase.tune_budget, t_fit)
        return summarize(results, self.test_sets, budget_ran_out), budget_ran_out


def run_planned(runner: PhaseRunner, plan: BudgetPlan | None, state: SweepState, *, unshared: SweepSpec,
                node: dict[str, float], folds: list[tuple[np.ndarray, np.ndarray]], sweep_dir: Path, resume: bool
                ) -> tuple[list[TrialSummary], TrialSummary | None, bool]:
    """A time-budgeted sweep by its plan (:mod:`orchestrator.search.plan`): screen on fold 0 at equal compute, then
    the finalists with all k folds. Returns every trial, the paper configuration's final trial, and whether the
    budget ran out. ``state`` (``sweep.json``) records the plan, the rungs' planned and measured seconds and the cost
    model's estimate beside the measured epoch of every screened configuration."""
    spec, console, name = runner.spec, runner.console, runner.name
    k, budget = spec.cv.k, float(spec.search.time_budget or 0)
    t0 = time.time()
    screen_spec = (share_resources(unshared, node, "for screening, this machine's", console, k=1)
                   if unshared.resources.auto else spec)
    points = spec.initial_points()  # every start point is screened; the first is the paper configuration
    paper = (points or [{}])[0]
    if plan is None:
        plan = _make_plan(runner, screen_spec, node, paper=paper, folds=folds, budget=budget - (time.time() - t0))
        state.plan, state.tune_experiments, state.plan_started = plan.as_dict(), [name], t0
        state.save(sweep_dir)
    for line in plan.lines():
        console.print(line)
    experiments = state.tune_experiments
    start = float(state.plan_started or t0) if not resume else t0  # a resumed rung gets its share again
    rungs = state.rungs
    screened: list[TrialSummary]
    screened_now = len(experiments) == 1  # the screening rung runs in this invocation (its training counts here)
    if screened_now:  # the screening rung: run it (or continue it)
        # trials stop on their allotment; the deadline is a backstop for a machine slower than measured
        screen_end = start + 1.1 * plan.screen.seconds + 10.0
        clock = TrialClock(deadline=screen_end, epoch_seconds=plan.screen.epoch_seconds,
                           train_allotment=plan.screen_each, horizon=plan.horizon)
        phase = Phase(name, screen_spec, folds[:1], plan.screen.configs, spec.max_epochs(), asha=False,
                      points=points or None, clock=clock,
                      tune_budget=max(1.0, screen_end - time.time()) + FINALISE_GRACE,
                      screen=True, optuna_seed=spec.search.seed, last_start=start + plan.last_start)
        t_screen = time.time()
        screened, _ = runner.run(phase, restore=resume)
        rungs["screen"] = {"planned_s": plan.screen.seconds,
                           "measured_s": time.time() - t_screen + rungs.get("screen", {}).get("measured_s", 0.0)}
        # Ctrl-C: --resume continues the screening, then the final rung
        if any(t.status == INTERRUPTED for t in screened):
            state.save(sweep_dir)
            return screened, None, False
        experiments.append(f"{name}-final")
        final_start = time.time()
        resume = False
    else:
        screened = runner.restored(experiments[0])
        final_start = t0
    cost = EpochCost.from_dict(plan.cost) if plan.cost else None
    if cost is not None:
        state.screened_costs, cost = cost_record(spec, screened, cost, plan.screen_cpus)
        if line := cost_line(state.screened_costs):
            console.print(line)
    state.save(sweep_dir)
    if paper and plan.baseline_final:
        finalists = [paper, *top_configs(screened, plan.final.configs - 1, exclude=paper)]
        what = f"the paper configuration and the best {len(finalists) - 1} of {len(screened)} screened"
    else:
        finalists = top_configs(screened, plan.final.configs)
        promoted = bool(paper) and any(is_config(f, paper) for f in finalists)
        what = f"the best {len(finalists)} of {len(screened)} screened" + (
            "; the paper configuration among them" if promoted else "; the paper configuration screened worse")
    if not finalists:  # nothing screened to a finite loss (every configuration diverged or failed)
        finalists = [paper]
        what = "no configuration screened to a finite loss: the paper configuration"
    console.print(f"final rung: {len(finalists)} configuration{'s' if len(finalists) > 1 else ''} × {k} folds ({what}; "
                  f"ranked by the validation loss each reached in the same seconds of screening; the final rung gives "
                  f"{plan.horizon:.0f} s of training per fold)")
    final_spec = spec
    # fewer finalists than slots: more CPUs each
    if unshared.resources.auto and len(finalists) < spec.search.max_concurrent:
        fewer = unshared.model_copy(
            update={"search": unshared.search.model_copy(update={"max_concurrent": len(finalists)})})
        final_spec = share_resources(fewer, node, "for the final rung, this machine's", console)
    # the final rung ends with the budget; resumed, it gets its share again
    end = start + plan.budget if not resume else t0 + plan.budget - plan.screen.seconds
    epoch = plan.final.epoch_seconds
    if cost is not None and finalists:  # the costliest finalist's k-fold epoch, priced by the calibrated model
        epoch = (max(cost.seconds(*spec.materialize(f)) for f in finalists) * k * plan.screen_cpus
                 / final_spec.resources.trial_cpus(k))
    clock = TrialClock(deadline=end, trial_seconds=plan.trial_seconds, epoch_seconds=epoch, to_the_end=True)
    warm = {}
    if spec.search.warm_start:  # each finalist's fold 0 goes on from its screened state
        for f in finalists:
            t = next((t for t in screened if t.status == SCREENED and t.params == f and t.checkpoint is not None), None)
            if t is not None:
                warm[config_key(f)] = t.checkpoint
    phase = Phase(experiments[-1], final_spec, folds, len(finalists), spec.max_epochs(), asha=False, points=finalists,
                  clock=clock, tune_budget=max(1.0, end - time.time()) + FINALISE_GRACE, warm_folds=warm)
    final, ran_out = runner.run(phase, restore=resume)
    rungs["final"] = {"planned_s": plan.final.seconds, "measured_s": time.time() - final_start}
    state.save(sweep_dir)
    baseline = next((t for t in final if paper and is_config(t.params, paper)), None)
    if baseline is None and paper:  # not promoted: its screening result is the baseline
        baseline = next((t for t in screened if is_config(t.params, paper)), None)
    return final + [replace(t, earlier=not screened_now) for t in screened], baseline, ran_out


def _make_plan(runner: PhaseRunner, screen_spec: SweepSpec, node: dict[str, float], *, paper: dict[str, Any],
               folds: list[tuple[np.ndarray, np.ndarray]], budget: float) -> BudgetPlan:
    """Measure one epoch of fold 0 of the paper configuration at a screening trial's CPUs, set the cost model's scale
    by it, and plan the rungs for ``budget`` seconds."""
    import ray

    spec = runner.spec
    k = spec.cv.k
    model_cfg, train_cfg = spec.materialize(paper)
    mols = ray.get(runner.data.ref)
    cpus1 = screen_spec.resources.trial_cpus(1)  # one screening trial's CPUs
    threads = max(1, round(cpus1))
    train, val = mols.subset(folds[0][0]), mols.subset(folds[0][1])
    seconds = measure_fold_epoch(model_cfg, train_cfg, train, val, threads)
    space, fixed = spec.space(), spec.fixed()
    cutoffs = [fixed.get("model.cutoff"), *(space["model.cutoff"].extremes() if "model.cutoff" in space else [])]
    pool = mols.subset(np.concatenate([folds[0][0], folds[0][1]]))
    cost = data_cost(pool, len(folds[0][0]), len(folds[0][1]), cutoffs).calibrated(
        [(model_cfg, train_cfg, seconds * threads)])
    worst = costliest(space, spec.materialize, cost)
    cpusk = spec.resources.trial_cpus(k)
    return make_plan(budget, seconds, cpus=node.get("CPU", cpusk), k=k, screen_cpus=cpus1,
                     screen_concurrent=spec.search.max_concurrent, final_cpus=cpusk,
                     final_concurrent=spec.search.max_concurrent, max_epochs=spec.max_epochs(),
                     num_samples=spec.search.num_samples, grace=grace_epochs(spec),
                     baseline_final=spec.search.baseline == "final", cost=cost,
                     costliest=None if worst is None else (worst[0], worst[1] / threads))


def cost_record(spec: SweepSpec, screened: list[TrialSummary], cost: EpochCost, screen_cpus: float
                ) -> tuple[list[dict[str, Any]], EpochCost]:
    """Each screened configuration's estimated fold-epoch (the plan's cost model) beside its measured one (its
    training seconds ÷ epochs), and the model re-calibrated on them (what prices the final rung)."""
    rows, measured = [], []
    threads = max(1, round(screen_cpus))
    for t in screened:
        if not t.epochs or not t.train_seconds or t.status != SCREENED:
            continue
        model, training = spec.materialize(t.params)
        est, got = cost.seconds(model, training) / threads, t.train_seconds / t.epochs
        measured.append((model, training, got * threads))
        rows.append({"trial_id": t.trial_id, "config": describe(model, training), "epochs": int(t.epochs),
                     "estimated_epoch_s": round(est, 4), "measured_epoch_s": round(got, 4),
                     "val_loss": t.val_loss_mean, "predicted_val_loss": t.predicted})
    calibrated = cost.calibrated(measured)
    # relative pricing: this machine's scale refitted
    for row, (model, training, _) in zip(rows, measured, strict=True):
        row["calibrated_epoch_s"] = round(calibrated.seconds(model, training) / threads, 4)
    return rows, calibrated


def cost_line(rows: list[dict[str, Any]]) -> str:
    """One line: how well the cost model priced the screened configurations."""
    rows = [r for r in rows if r["measured_epoch_s"] > 0]
    if not rows:
        return ""
    err = [abs(r["estimated_epoch_s"] / r["measured_epoch_s"] - 1) for r in rows]
    rel = [abs(r["calibrated_epoch_s"] / r["measured_epoch_s"] - 1) for r in rows]
    worst = max(rows, key=lambda r: abs(r["calibrated_epoch_s"] / r["measured_epoch_s"] - 1))
    scale = float(np.median([r["measured_epoch_s"] / r["estimated_epoch_s"] for r in rows]))
    return (f"cost model: {len(rows)} screened configurations' epochs estimated within a median "
            f"{np.median(err):.0%} of what they measured; the screened epochs ran {scale:.2f}× the plan's measured "
            f"one, and with that scale the estimates are within a median {np.median(rel):.0%} "
            f"(worst {max(rel):.0%}: {worst['config']}, {worst['calibrated_epoch_s']:.3g} s estimated, "
            f"{worst['measured_epoch_s']:.3g} s measured); all in sweep.json")


def grace_epochs(spec: SweepSpec) -> int:
    sched = spec.search.scheduler
    if isinstance(sched, SchedulerConfig) and sched.asha is not None:
        return sched.asha.grace_period
    return max(1, spec.max_epochs() // 10)


def warm_start(searcher, space: dict, trials: list[TrialSummary]) -> int:
    """Tell the searcher's Optuna study every earlier trial with a finite objective (completed: its best CV
    loss; pruned or stopped: its last), so an extension samples from what was learnt. Returns how many."""
    import optuna

    # Ray's OptunaSearch keeps its study here; Ray's own warm start cannot take a define-by-run space
    study = searcher._ot_study
    told = 0
    for t in trials:
        value = t.val_loss_mean
        if value is None or not np.isfinite(value):
            continue
        params = {k: v for k, v in t.params.items() if k in space}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: space[k].optuna() for k in params},
                                                  value=float(value)))
        told += 1
    return told


def share_resources(spec: SweepSpec, node: dict[str, float], whose: str, console: Console,
                    k: int | None = None) -> SweepSpec:
    """``resources: auto`` made explicit for ``node`` (trials of ``k`` folds, default ``cv.k``), and said in one
    line."""
    if not spec.resources.auto:
        return spec
    n, k = spec.search.max_concurrent, k or spec.cv.k
    res = spec.resources.shared(node, k, n)
    gpus = f" and {node.get('GPU', 0.0):g} GPU" if res.gpus_per_trial else ""
    gpu = f" and {res.gpus_per_trial:g} GPU" if res.gpus_per_trial else ""
    each = (f"{res.cpus_per_trial:g} CPU{gpu} per trial, its {k} folds stacked in one process"
            if res.resolved_layout() == "stacked" else f"{res.cpus_per_fold:g} CPU per fold actor")
    console.print(f"resources auto: {whose} {node.get('CPU', 0.0):g} CPU{gpus} shared by {n} concurrent "
                  f"trial{'s' if n > 1 else ''} × {k} folds: {each}")
    return spec.model_copy(update={"resources": res})
