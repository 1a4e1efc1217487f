"""``sweep run``: Ray Tune + Optuna over configurations, k fold members per trial, MLflow tracking."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from orchestrator.search.plan import SCREEN_SHARE, BudgetPlan, make_plan, measure_fold_epoch, top_configs
from orchestrator.search.trial import TrialClock
from orchestrator.spec.space import define_by_run
from orchestrator.spec.sweep import SchedulerConfig, SweepSpec
from orchestrator.tracking import keys
from orchestrator.tracking.callback import MlflowTracker
from orchestrator.tracking.statuses import (
    BUDGET,
    COMPLETED,
    FINALISED,
    INTERRUPTED,
    NOT_STARTED,
    PRUNED,
    RANK,
    SCREENED,
    budget_used,
    mlflow_status,
    trial_status,
)
from orchestrator.tracking.store import NOTE, PARENT, ROLE, SWEEP_ID, Store, git_commit
from schnet_model.data.heldout import n_held_out, with_tests
from schnet_model.data.splits import SplitManifest, holdout, kfold, train_val
from schnet_model.files import sha256 as checksum
from schnet_model.files import write_text

METRIC = "val_loss_mean"


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; one line."""


@dataclass
class TrialSummary:
    """What became of one trial, as the results table, the searcher's warm start and MLflow's reconciliation read it."""

    trial_id: str
    status: str  # orchestrator.tracking.statuses
    params: dict[str, Any]
    val_loss_mean: float | None  # the CV objective: best (completed) or last fold-mean validation loss
    val_loss_std: float | None
    epochs: int | None
    tests: dict[str, dict[str, float | None]]  # {test set: {"energy": MAE, "forces": MAE}} of the fold-mean prediction
    checkpoint: Any = None  # the final (or last) tune.Checkpoint; None if it saved none
    train_seconds: float = 0.0
    startup_seconds: float | None = None
    step_mode: str | None = None
    error: str | None = None  # the last line of a failed trial's error
    earlier: bool = False  # a trial of an earlier run of this sweep (an extension's predecessors)


@dataclass
class SweepOutcome:
    """A sweep's result: its trials, best first."""

    name: str
    storage: Path
    parent_run_id: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    seconds: float
    max_concurrent: int = 1
    energy_unit: str = ""
    experiment_id: str = ""
    test_sets: list[str] = field(default_factory=list)  # named test sets (the table's columns)
    interrupted: bool = False  # Ctrl-C ended it: resumable with --resume
    baseline: TrialSummary | None = None  # the paper configuration at full fidelity (a budget plan's final rung)

    def overhead_report(self) -> str:
        """Share of the sweep's wall time spent in training epochs, and per-trial start-up."""
        now = [t for t in self.trials if not t.earlier]  # this run's trials (not an extension's predecessors)
        train = sum(t.train_seconds for t in now)
        share = train / (self.seconds * self.max_concurrent) if self.seconds else 0.0
        starts = [t.startup_seconds for t in now if t.startup_seconds is not None]
        start = f"; trial start-up median {np.median(starts):.1f} s" if starts else ""
        modes = sorted({t.step_mode for t in self.trials if t.step_mode})
        mode = "".join(f"\nstacked step: {m}" for m in modes)
        return (f"time in training epochs: {train:.0f} s of {self.seconds:.0f} s wall × {self.max_concurrent} concurrent "
                f"= {share:.0%}{start}{mode}")


def storage_root(spec: SweepSpec) -> Path:
    """Local directory of the sweeps' ``sweep.json`` (and of Tune's results unless ``storage`` is a URI)."""
    return Path(spec.storage) if spec.storage and "://" not in spec.storage else Path("sweeps").resolve()


def tune_storage(spec: SweepSpec) -> str:
    """Where Tune keeps results and checkpoints: ``storage`` as a path, or a URI (s3://bucket/sweeps)."""
    return spec.storage.rstrip("/") if spec.storage and "://" in spec.storage else str(storage_root(spec))


def latest_sweep(root: Path, prefix: str, finished: bool) -> str | None:
    """Newest sweep of this spec name that finished (``finished``) or did not."""
    cands = []
    for d in root.glob(f"{prefix}-*"):
        meta = d / "sweep.json"
        if meta.is_file() and (json.loads(meta.read_text()).get("status") == "finished") == finished:
            cands.append(d)
    return max(cands, key=lambda p: p.stat().st_mtime).name if cands else None


class LiveProgress(tune.Callback):
    """Rich live view: trials running/completed/pruned/failed, best so far, elapsed (a Tune callback)."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.total, self.t0 = total, time.time()
        self.best: float | None = None
        self.console = console
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks; consoles and live views hold locks
        return {**self.__dict__, "live": None, "console": None}

    def table(self, trials: list) -> Table:
        counts = {"RUNNING": 0, "PENDING": 0, "TERMINATED": 0, "ERROR": 0, "PAUSED": 0}
        ended = {COMPLETED: 0, PRUNED: 0}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
            if t.status == "TERMINATED" and (s := trial_status(False, t.last_result, False)) in (*ended, BUDGET, SCREENED):
                ended[PRUNED if s == PRUNED else COMPLETED] += 1
            v = (t.last_result or {}).get(METRIC)
            if v is not None and np.isfinite(v) and (self.best is None or v < self.best):
                self.best = v
        t = Table(title="sweep progress", show_header=True)
        for c in ("trials", "running", "completed", "pruned", "failed", "best val loss (fold mean)", "elapsed"):
            t.add_column(c, justify="right")
        t.add_row(f"{len(trials)}/{self.total}", str(counts["RUNNING"]), str(ended[COMPLETED]), str(ended[PRUNED]),
                  str(counts["ERROR"]), "–" if self.best is None else f"{self.best:.4g}", f"{time.time() - self.t0:.0f} s")
        return t

    def _refresh(self, trials: list) -> None:
        if self.live is None:
            self.live = Live(self.table(trials), console=self.console or Console(), refresh_per_second=2)
            self.live.start()
        self.live.update(self.table(trials))

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if iteration % 20 == 0:
            self._refresh(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._refresh(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._refresh(trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._refresh(trials)

    def on_experiment_end(self, trials: list, **info) -> None:
        self._refresh(trials)
        if self.live is not None:
            self.live.stop()
            self.live = None


def prepare_data(spec: SweepSpec):
    """Load the dataset and its test files; hold out the test set; k folds over the CV pool; the split manifest."""
    ds = spec.dataset
    joined = with_tests(ds)
    loaded = joined.dataset
    n_pool = ds.n_train + ds.n_val
    pool, test = holdout(len(loaded.molecules), n_held_out(ds, loaded), ds.split_seed, loaded.test, loaded.train_pool,
                         n_needed=n_pool)
    if len(pool) > n_pool:
        pool, _ = train_val(pool, n_pool, 0, ds.split_seed)
    folds = kfold(pool, spec.cv.k, spec.cv.seed)
    manifest = SplitManifest(dataset=str(loaded.path), dataset_sha256=checksum(loaded.path), seed=ds.split_seed,
                             test=test, folds=folds, official_test=loaded.test is not None, test_files=joined.files)
    manifest.check_disjoint()
    return joined, manifest


def run_sweep(spec: SweepSpec, address: str | None = None, resume: bool | str = False,
              console: Console | None = None, more: int | None = None) -> SweepOutcome:
    """Run (or resume, or extend by ``more`` trials) a sweep and return its trials, best first.

    An extension adds trials to a finished sweep: the same MLflow sweep run, a new Tune experiment
    (``NAME-more1``, …), the searcher told every earlier trial's result first (no trial re-run).
    """
    import ray

    from orchestrator.search.trial import TestLabels

    console = console or Console()
    t_start = time.time()
    _quiet()
    if spec.resources.gpus() > 0 and address is None:
        import torch

        if not torch.cuda.is_available():
            key = "gpus_per_trial" if spec.resources.gpus_per_trial else "gpus_per_fold"
            raise SweepError(f"resources.{key}={spec.resources.gpus()} but this machine has no GPU")
    from orchestrator.cluster.fit import local_nodes, trial_fit_error

    unshared, node = spec, local_nodes()[0] if address is None else {}
    if address is None:
        spec = _share(spec, node, "this machine's", console)
    if address is None and (err := trial_fit_error(spec, local_nodes(), "this machine has")):
        raise SweepError(err)
    spec = _clamp_grace(spec, console)
    root = storage_root(spec)
    if resume or more:
        what = "finished" if more else "unfinished"
        name = resume if isinstance(resume, str) else latest_sweep(root, spec.name, finished=bool(more))
        if name is None or not (root / name / "sweep.json").is_file():
            done = None if more else latest_sweep(root, spec.name, finished=True)
            hint = f"; {done} finished: add trials with --more N" if done else ""
            raise SweepError(f"no {what} sweep named {spec.name}-* under {root} to {'extend' if more else 'resume'}{hint}")
        meta = json.loads((root / name / "sweep.json").read_text())
        if more and meta.get("status") != "finished":
            raise SweepError(f"sweep {name} did not finish: continue it with --resume first, then add trials with --more")
        if not more and meta.get("status") == "finished":
            raise SweepError(f"sweep {name} already finished: add trials with --more N")
    else:
        name = f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
        meta = {}
    uri = spec.tracking.resolved_uri()
    experiment = spec.tracking.experiment or spec.name

    joined, manifest = prepare_data(spec)
    data = joined.molecules  # the dataset's molecules, then every test file's
    if not (resume or more):
        _note_out_of_range(spec, console)
    console.print(joined.dataset.molecules.describe())
    console.print(f"{spec.cv.k} folds over {sum(len(f.val) for f in manifest.folds)} molecules; {manifest.describe_tests()}")
    store = Store(uri, experiment)
    if resume or more:
        parent = meta["parent_run_id"]
    else:
        from schnet_model import __version__

        parent = store.client.create_run(store.exp_id, run_name=name, tags={
            ROLE: "sweep", SWEEP_ID: name, keys.SPEC_NAME: spec.name, keys.VERSION: __version__,
            keys.GIT_COMMIT: git_commit(), keys.DATASET_SHA: manifest.dataset_sha256}).info.run_id
        flat = {f"{s}.{k}": v for s in ("cv", "search", "resources") for k, v in getattr(spec, s).model_dump().items()}
        flat.update({f"model.{k}": v for k, v in spec.model.items()})
        flat.update({f"training.{k}": v for k, v in spec.training.items()})
        store.log(parent, {"k": spec.cv.k, **{f"n_{name}" if name == "test" else f"n_test_{name}": len(idx)
                                              for name, idx in manifest.test_sets().items()}}, params=flat)
        _log_dataset(store, parent, data, manifest)
        with tempfile.TemporaryDirectory() as t:
            (Path(t) / keys.SPEC_JSON).write_text(spec.model_dump_json(indent=2))
            manifest.write(Path(t) / keys.SPLIT_JSON)
            store.client.log_artifact(parent, str(Path(t) / keys.SPEC_JSON))
            store.client.log_artifact(parent, str(Path(t) / keys.SPLIT_JSON))
        (root / name).mkdir(parents=True, exist_ok=True)
        meta = {"name": name, "spec_name": spec.name, "parent_run_id": parent, "tracking_uri": uri,
                "experiment": experiment, "status": "running", "created": time.time()}
        _write_json(root / name / "sweep.json", meta)

    if not ray.is_initialized():
        import logging

        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    from orchestrator.cluster.fit import cluster_nodes
    from orchestrator.cluster.storage import StorageNotShared, check_storage_shared

    if address is not None and spec.resources.auto:
        nodes = [n for n in cluster_nodes() if n.get("CPU", 0.0) >= 1]
        if not nodes:
            raise SweepError("resources: auto shares a node among the trials, but no node of the cluster has a CPU for "
                             "trials yet (an autoscaling cluster starts workers on demand): give resources explicitly, "
                             "e.g. --set resources.cpus_per_trial=4 --set resources.gpus_per_trial=0.25")
        node = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
        spec = _share(spec, node, "the largest node's", console)
    if address is not None and (err := trial_fit_error(spec, cluster_nodes(), "the cluster's largest node has")):
        console.print(f"note: {err.replace('no trial could ever start; use', 'a trial waits for the autoscaler (or forever without one); or use')}")

    try:
        check_storage_shared(tune_storage(spec), root / name / "sweep.json")
    except StorageNotShared as e:
        store.end(parent, "FAILED")
        raise SweepError(str(e)) from None
    data_ref = ray.put(data)
    tests = manifest.test_sets()
    base = {"data": {"ref": data_ref}, "tests": tests, "test_labels": {n: TestLabels.of(data, idx) for n, idx in tests.items()}}
    folds = [(f.train, f.val) for f in manifest.folds]
    experiments = meta.get("tune_experiments", [name])  # Tune experiments of this sweep: the first, then extensions
    if more:
        experiments.append(f"{name}-more{len(experiments)}")
        meta.update(tune_experiments=experiments, status="running")
        _write_json(root / name / "sweep.json", meta)
        store.client.update_run(parent, status="RUNNING")
    elif resume:  # an interrupted (or killed) sweep runs again
        meta["status"] = "running"
        _write_json(root / name / "sweep.json", meta)
        store.client.update_run(parent, status="RUNNING")
    test_sets = list(tests)
    runner = _PhaseRunner(spec, store, name, parent, uri, experiment, console, base, test_sets)
    budget = spec.search.time_budget
    planned = bool(meta.get("plan")) if (resume or more) else (budget is not None and spec.search.plan == "auto")
    planned = planned and not more
    earlier = [replace(t, earlier=True) for e in experiments[:-1] for t in runner.restored(e)]
    baseline = None
    if planned:
        plan = BudgetPlan.from_dict(meta["plan"]) if meta.get("plan") else None
        now, baseline, budget_ran_out = _run_planned(runner, unshared, node, plan, folds, meta, root / name, bool(resume))
        earlier = []
    else:
        phase = Phase(experiments[-1], spec, folds, more or spec.search.num_samples, spec.max_epochs(),
                      asha=True, points=None if more else spec.initial_points() or None,
                      clock=TrialClock(deadline=time.time() + budget if budget else None), tune_budget=budget,
                      optuna_seed=spec.search.seed + len(experiments) - 1)
        if more:
            phase = replace(phase, warm=earlier)
        now, budget_ran_out = runner.run(phase, restore=bool(resume) and not more)
    interrupted = any(t.status == INTERRUPTED for t in now) or (
        not budget_ran_out and not planned and
        (len(now) < (more or spec.search.num_samples) or any(t.status == NOT_STARTED for t in now)))
    trials = sorted(now + earlier, key=_rank)
    reconcile(store, name, trials)
    best = next((t for t in trials if t.status in FINALISED), None)
    if best is not None:
        _log_best(store, parent, name, best, data, manifest)
    store.end(parent, "KILLED" if interrupted else "FINISHED")
    meta["status"] = "interrupted" if interrupted else "finished"
    _write_json(root / name / "sweep.json", meta)
    outcome = SweepOutcome(name, root / name, parent, trials, best, time.time() - t_start, spec.search.max_concurrent,
                           data.energy_unit, store.exp_id, test_sets, interrupted, baseline)
    if baseline is not None:
        _log_baseline(store, parent, baseline, best)
    store.log(parent, {"wall_seconds": outcome.seconds,
                       "train_seconds": sum(t.train_seconds for t in trials if not t.earlier)})
    return outcome


@dataclass(frozen=True)
class Phase:
    """One Tune experiment of a sweep: its configurations, folds, epochs, scheduler and clock."""

    experiment: str
    spec: SweepSpec  # resources made explicit for these trials' folds
    folds: list[tuple[np.ndarray, np.ndarray]]  # the folds each trial trains (fold 0 alone when screening)
    num_samples: int
    max_epochs: int
    asha: bool = True  # the spec's ASHA scheduler (when it has one), else FIFO
    points: list[dict[str, Any]] | None = None  # configurations evaluated first (all of them when ``fixed``)
    fixed: bool = False  # evaluate exactly ``points`` (a planned final rung: num_samples = len(points))
    clock: TrialClock = field(default_factory=TrialClock)
    tune_budget: float | None = None  # Tune's own time limit (a backstop: trials finalise themselves before it)
    screen: bool = False  # a screening rung: its trials are "screened", never the best trial
    optuna_seed: int = 0
    warm: list[TrialSummary] = field(default_factory=list)  # earlier trials the searcher is told first (--more)


class _PhaseRunner:
    """Runs (or restores) the Tune experiments of one sweep, each with its own trainable, tracker and view."""

    def __init__(self, spec: SweepSpec, store: Store, name: str, parent: str, uri: str, experiment: str, console: Console,
                 base: dict[str, Any], test_sets: list[str]) -> None:
        self.spec, self.store, self.name, self.parent, self.uri = spec, store, name, parent, uri
        self.experiment, self.console, self.base, self.test_sets = experiment, console, base, test_sets

    def trainable(self, phase: Phase):
        from ray import tune

        from orchestrator.search.trial import run_trial

        res, k = phase.spec.resources, len(phase.folds)
        ctx = {**self.base, "spec": phase.spec.model_dump_json(), "folds": phase.folds, "layout": res.resolved_layout(),
               "max_epochs": phase.max_epochs, "clock": phase.clock, "screen": phase.screen,
               "objective_rho": phase.spec.objective_rho()}
        return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                   tune.PlacementGroupFactory(res.bundles(k), strategy=res.placement_strategy))

    def restored(self, experiment: str) -> list[TrialSummary]:
        """The trials of an earlier, finished experiment of this sweep."""
        from ray import tune

        phase = Phase(experiment, self.spec, [(np.arange(1), np.arange(1))], 1, 1)
        return summarize(tune.Tuner.restore(f"{tune_storage(self.spec)}/{experiment}", trainable=self.trainable(phase))
                         .get_results(), self.test_sets)

    def run(self, phase: Phase, restore: bool) -> tuple[list[TrialSummary], bool]:
        """Run the phase (or continue it after an interruption); its trials, and whether the budget ran out."""
        from optuna.samplers import TPESampler
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        spec, k = phase.spec, len(phase.folds)
        self.console.print(f"trial layout: {spec.resources.describe(k)}")
        trainable = self.trainable(phase)
        if restore:
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
            # Optuna evaluates ``points`` first: with ``fixed`` (a final rung) they are all of the phase's trials
            searcher = OptunaSearch(space=define_by_run(spec.space(), spec.fixed()), metric=METRIC, mode="min",
                                    points_to_evaluate=phase.points, sampler=TPESampler(seed=phase.optuna_seed))
            if phase.warm:
                told = warm_start(searcher, spec.space(), phase.warm)
                self.console.print(f"extending sweep {self.name} by {phase.num_samples} trials; the searcher knows "
                                   f"the {told} earlier trials' results")
            search = ConcurrencyLimiter(searcher, spec.search.max_concurrent)
            tracker = MlflowTracker(self.uri, self.experiment, self.name, self.parent, k, spec.search.time_budget)
            callbacks = [tracker, LiveProgress(phase.num_samples, self.console)]
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric=METRIC, mode="min", search_alg=search, scheduler=scheduler,
                                            num_samples=phase.num_samples, time_budget_s=phase.tune_budget, reuse_actors=True),
                run_config=tune.RunConfig(name=phase.experiment, storage_path=tune_storage(spec), callbacks=callbacks,
                                          verbose=0, failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        t_fit = time.time()
        results = tuner.fit()  # Ctrl-C: Tune stops its trials, saves its state and returns
        budget_ran_out = budget_used(phase.tune_budget, t_fit)
        return summarize(results, self.test_sets, budget_ran_out), budget_ran_out


def _run_planned(runner: _PhaseRunner, unshared: SweepSpec, node: dict[str, float], plan: BudgetPlan | None,
                 folds: list[tuple[np.ndarray, np.ndarray]], meta: dict[str, Any], sweep_dir: Path, resume: bool
                 ) -> tuple[list[TrialSummary], TrialSummary | None, bool]:
    """A time-budgeted sweep by its plan (:mod:`orchestrator.search.plan`): screen on fold 0, then the finalists
    with all k folds. Returns every trial, the paper configuration's final trial, and whether the budget ran out."""
    spec, console, name = runner.spec, runner.console, runner.name
    k, budget = spec.cv.k, float(spec.search.time_budget or 0)
    t0 = time.time()
    screen_spec = _share(unshared, node, "for screening, this machine's", console, k=1) if unshared.resources.auto else spec
    paper = (spec.initial_points() or [{}])[0]
    if plan is None:
        model_cfg, train_cfg = spec.materialize(paper)
        data = runner.base["data"]["ref"]
        import ray

        mols = ray.get(data)
        threads = max(1, round(screen_spec.resources.trial_cpus(1) if screen_spec.resources.resolved_layout() == "stacked"
                               else screen_spec.resources.cpus_per_fold))
        seconds = measure_fold_epoch(model_cfg, train_cfg, mols.subset(folds[0][0]), mols.subset(folds[0][1]), threads)
        res1, resk = screen_spec.resources, spec.resources
        cpus1 = res1.trial_cpus(1) if res1.resolved_layout() == "stacked" else res1.cpus_per_fold
        cpusk = resk.trial_cpus(k) if resk.resolved_layout() == "stacked" else k * resk.cpus_per_fold
        plan = make_plan(budget - (time.time() - t0), seconds, node.get("CPU", cpusk), k, cpus1,
                         spec.search.max_concurrent, cpusk, spec.search.max_concurrent, spec.max_epochs(),
                         spec.search.num_samples, _grace(spec))
        meta.update(plan=plan.as_dict(), tune_experiments=[name], plan_started=t0)
        _write_json(sweep_dir / "sweep.json", meta)
    for line in plan.lines():
        console.print(line)
    start = float(meta.get("plan_started", t0)) if not resume else t0
    experiments = meta["tune_experiments"]
    # the screening rung ends when its trials have run; its deadline is a backstop for an estimate gone wrong
    screen_end = start + min(0.75 * plan.budget, max(1.5 * plan.screen.seconds, SCREEN_SHARE * plan.budget))
    screened: list[TrialSummary]
    if len(experiments) == 1:  # the screening rung: run it (or continue it)
        clock = TrialClock(deadline=screen_end, epoch_seconds=plan.screen.epoch_seconds)
        phase = Phase(name, screen_spec, folds[:1], plan.screen.configs, plan.screen.epochs, asha=False,
                      points=[paper] if paper else None, clock=clock, tune_budget=max(1.0, screen_end - time.time()),
                      screen=True, optuna_seed=spec.search.seed)
        screened, _ = runner.run(phase, restore=resume)
        if any(t.status == INTERRUPTED for t in screened):  # Ctrl-C: --resume continues the screening, then the final rung
            return screened, None, False
        experiments.append(f"{name}-final")
        meta["tune_experiments"] = experiments
        _write_json(sweep_dir / "sweep.json", meta)
        resume = False
    else:
        screened = runner.restored(experiments[0])
    finalists = [paper, *top_configs(screened, plan.final.configs - 1, exclude=paper)] if paper else \
        top_configs(screened, plan.final.configs)
    console.print(f"final rung: {len(finalists)} configurations × {k} folds (the paper configuration and the best "
                  f"{len(finalists) - 1} of {len(screened)} screened)")
    end = start + plan.budget
    clock = TrialClock(deadline=end, trial_seconds=plan.trial_seconds, epoch_seconds=plan.final.epoch_seconds)
    phase = Phase(experiments[-1], spec, folds, len(finalists), spec.max_epochs(), asha=False, points=finalists,
                  fixed=True, clock=clock, tune_budget=max(1.0, end - time.time()))
    final, ran_out = runner.run(phase, restore=resume)
    baseline = next((t for t in final if paper and all(t.params.get(key) == v for key, v in paper.items())), None)
    return final + [replace(t, earlier=True) for t in screened], baseline, ran_out


def _grace(spec: SweepSpec) -> int:
    sched = spec.search.scheduler
    if isinstance(sched, SchedulerConfig) and sched.asha is not None:
        return sched.asha.grace_period
    return max(1, spec.max_epochs() // 10)


def _log_baseline(store: Store, parent: str, baseline: TrialSummary, best: TrialSummary | None) -> None:
    """The paper configuration's full-fidelity result on the sweep run, next to the best trial's."""
    store.client.set_tag(parent, keys.BASELINE_TRIAL, baseline.trial_id)
    store.log(parent, {keys.baseline_mae(t, p): v for t, m in baseline.tests.items() for p, v in m.items() if v is not None}
              | ({"baseline_val_loss_mean": baseline.val_loss_mean} if baseline.val_loss_mean is not None else {}))


def _share(spec: SweepSpec, node: dict[str, float], whose: str, console: Console, k: int | None = None) -> SweepSpec:
    """``resources: auto`` made explicit for ``node`` (trials of ``k`` folds, default ``cv.k``), and said in one line."""
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


def _clamp_grace(spec: SweepSpec, console: Console) -> SweepSpec:
    """ASHA's grace period cannot exceed a trial's epochs (Ray asserts it): clamp it, and say so."""
    sched = spec.search.scheduler
    if not isinstance(sched, SchedulerConfig) or sched.asha is None or sched.asha.grace_period <= spec.max_epochs():
        return spec
    console.print(f"note: search.scheduler.asha.grace_period={sched.asha.grace_period} exceeds the trials' "
                  f"{spec.max_epochs()} epochs; using {spec.max_epochs()} (no trial is pruned before its last epoch)")
    asha = sched.asha.model_copy(update={"grace_period": spec.max_epochs()})
    search = spec.search.model_copy(update={"scheduler": sched.model_copy(update={"asha": asha})})
    return spec.model_copy(update={"search": search})


def _quiet() -> None:
    """Keep the terminal for our progress view: silence Ray's, Optuna's and MLflow's chatter."""
    import logging
    import warnings

    import optuna

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Tune snapshots its experiment state whenever a trial has saved num_to_keep checkpoints since the
    # last snapshot (what keeps --resume close to the newest checkpoints) and warns that this is
    # "excessive" with quick epochs; the snapshots are wanted, the warning is not
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune snapshots its experiment state (what --resume restores) every ≥ 10 s ("auto"); a snapshot every
    # second kept it closer to MLflow but halved the quickstart's speed (the driver shares the cores with the
    # folds). A trial that completed after the last snapshot reports its final checkpoint again instead
    # (trial._final_checkpoint), and MLflow keeps its record (tracking.MlflowTracker._recorded).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "ray", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's own notices ("Stop signal received", "Resume experiment with: Tuner.restore(...)") name its
    # API, not this tool's commands; what they say is said in our terms (the table, the resume hint)
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")


def _note_out_of_range(spec: SweepSpec, console: Console) -> None:
    for point in spec.initial_points():
        for key, value in point.items():
            d = spec.space()[key]
            if d.kind != "choice" and not (d.extremes()[0] <= value <= d.extremes()[1]):
                console.print(f"note: the first trial's {key}={value} lies outside the searched range "
                              f"{d.extremes()}; it is evaluated anyway (the paper configuration as a baseline)")
            elif d.kind == "choice" and value not in d.extremes():
                console.print(f"note: the first trial's {key}={value!r} is not among the choices {d.extremes()}")


def summarize(results, test_sets: list[str], budget_ran_out: bool = False) -> list[TrialSummary]:
    """One summary per trial, completed ones first by CV mean validation loss (statuses:
    :mod:`orchestrator.tracking.statuses`)."""
    out = []
    for r in results:
        m = r.metrics or {}
        out.append(TrialSummary(
            trial_id=m.get("trial_id") or Path(r.path).name, status=trial_status(r.error is not None, m, budget_ran_out),
            params=r.config, val_loss_mean=m.get("best_val_loss_mean", m.get(METRIC)), val_loss_std=m.get("val_loss_std"),
            epochs=m.get("epoch", m.get("training_iteration")), tests=keys.maes_by_test_set(m, test_sets),
            checkpoint=r.checkpoint, train_seconds=m.get("train_seconds") or 0.0, startup_seconds=m.get("startup_seconds"),
            step_mode=m.get("step_mode"), error=str(r.error).strip().splitlines()[-1] if r.error else None))
    out.sort(key=_rank)
    return out


def _rank(t: TrialSummary) -> tuple[int, float]:
    return RANK[t.status], t.val_loss_mean if t.val_loss_mean is not None else np.inf


def warm_start(searcher, space: dict, trials: list[TrialSummary]) -> int:
    """Tell the searcher's Optuna study every earlier trial with a finite objective (completed: its best CV
    loss; pruned or stopped: its last), so an extension samples from what was learnt. Returns how many."""
    import optuna

    study = searcher._ot_study  # Ray's OptunaSearch keeps its study here; Ray's own warm start cannot take a define-by-run space
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


LOST = "lost"
LOST_REASON = ("the driver stopped before Tune's experiment state recorded this trial (it is saved periodically); "
               "on --resume the searcher sampled a replacement")


def reconcile(store: Store, name: str, trials: list[TrialSummary]) -> None:
    """No run left RUNNING and every trial run says what became of it: end (and label) any trial/fold run
    the callbacks could not (the driver died; the time budget or Ctrl-C ended the trial)."""
    state = {t.trial_id: t.status for t in trials}
    for run in store.find(**{SWEEP_ID: name}):
        role, trial_id = run.data.tags.get(ROLE), run.data.tags.get(keys.TRIAL_ID)
        if role == "trial" and trial_id in state and keys.STATUS not in run.data.tags:
            store.client.set_tag(run.info.run_id, keys.STATUS, state[trial_id])
        if run.info.status == "RUNNING" and role in ("trial", "fold"):
            if trial_id not in state:  # started, but the driver died before Tune's state recorded it
                store.client.set_tag(run.info.run_id, keys.STATUS, LOST)
                store.client.set_tag(run.info.run_id, keys.ERROR, LOST_REASON)
            store.end(run.info.run_id, mlflow_status(state[trial_id]) if trial_id in state else "KILLED")


def _log_best(store: Store, parent: str, name: str, best: TrialSummary, data, manifest: SplitManifest) -> None:
    """Best trial: tags on the sweep run, parity plots on the test set."""
    from orchestrator.tracking.plots import parity

    c = store.client
    runs = store.find(**{keys.TRIAL_ID: best.trial_id, ROLE: "trial"})
    c.set_tag(parent, keys.BEST_TRIAL, best.trial_id)
    if runs:
        c.set_tag(parent, keys.BEST_TRIAL_RUN, runs[0].info.run_id)
    unit = data.energy_unit
    sets = manifest.test_sets()
    errs = "".join(f"; its {len(sets[t]):,}-molecule {t} set: energy MAE {m['energy']:.4g} {unit}"
                   + ("" if m["forces"] is None else f", forces MAE {m['forces']:.4g} {unit}/Å")
                   for t, m in best.tests.items() if m["energy"] is not None)
    c.set_tag(parent, NOTE, f"Best trial {best.trial_id} ({', '.join(f'{k}={v}' for k, v in best.params.items())}): "
                            f"CV validation loss {best.val_loss_mean:.4g}{errs or '; ' + manifest.describe_tests()} "
                            f"(fold-mean ensemble). Assemble its fold models into the ensemble with calibrated std: "
                            f"`sweep ensemble {name}`.")
    store.log(parent, {"best_val_loss_mean": best.val_loss_mean or np.nan,
                       **{keys.best_mae(t, p): v for t, m in best.tests.items() for p, v in m.items() if v is not None}})
    if best.checkpoint is None:
        return
    with best.checkpoint.as_directory() as d, np.load(Path(d) / keys.PREDICTIONS) as z:  # local or s3://
        pred = {k: z[k] for k in z.files}
    with tempfile.TemporaryDirectory() as t:
        for name in sets:  # parity plots per test set: plots/parity_energy.png (test), plots/parity_energy_NAME.png
            test, tag = data.subset(pred[keys.prediction(name, "idx")]), "" if name == "test" else f"_{name}"
            parity(test.E, pred[keys.prediction(name, "energy")].mean(0), unit, f"energy ({name})",
                   Path(t) / f"parity_energy{tag}.png")
            c.log_artifact(parent, str(Path(t) / f"parity_energy{tag}.png"), "plots")
            if keys.prediction(name, "forces") in pred:
                parity(test.F.ravel(), pred[keys.prediction(name, "forces")].mean(0).ravel(), f"{unit}/Å",
                       f"force components ({name})", Path(t) / f"parity_forces{tag}.png")
                c.log_artifact(parent, str(Path(t) / f"parity_forces{tag}.png"), "plots")


def _log_dataset(store: Store, parent: str, data, manifest: SplitManifest) -> None:
    """The dataset as an MLflow dataset input of the sweep run: name, sha256 digest, source, units, sizes."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = {"molecules": len(data), "atoms_min": int(data.n_atoms.min()), "atoms_max": int(data.n_atoms.max()),
               "elements": data.elements, "energy_unit": data.energy_unit, "force_unit": data.force_unit,
               "length_unit": "Å", "test": len(manifest.test), "folds": len(manifest.folds),
               "test_files": {name: {"path": f.path, "sha256": f.sha256, "molecules": len(f.idx)}
                              for name, f in manifest.test_files.items()}}
    ds = Dataset(name=Path(manifest.dataset).name, digest=manifest.dataset_sha256[:36], source_type="local",
                 source=json.dumps({"uri": manifest.dataset}), profile=json.dumps(profile))
    store.client.log_inputs(parent, datasets=[DatasetInput(ds, [InputTag("mlflow.data.context", "training")])])


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_text(path, json.dumps(obj, indent=2))


def baseline_line(outcome: SweepOutcome) -> str:
    """What the search bought: the best trial against the paper configuration trained at full fidelity."""
    base, best, unit = outcome.baseline, outcome.best, outcome.energy_unit
    assert base is not None and best is not None
    name = keys.headline_set({keys.ensemble_mae(t, p): v for t, m in best.tests.items() for p, v in m.items()
                              if v is not None}) or ""

    def errs(t: TrialSummary) -> str:
        m = t.tests.get(name, {})
        cv = "–" if t.val_loss_mean is None else f"{t.val_loss_mean:.4g}"
        fe = "" if m.get("forces") is None else f", {name} F MAE {m['forces']:.4g} {unit}/Å"
        ee = "" if m.get("energy") is None else f", {name} E MAE {m['energy']:.4g} {unit}"
        return f"CV val loss {cv}{fe}{ee} ({t.status}, {t.epochs} epochs)"

    if best.trial_id == base.trial_id:
        return f"the paper configuration is the best trial ({errs(base)}): the search found nothing better in its budget"
    gain = ""
    bf, pf = best.tests.get(name, {}).get("forces"), base.tests.get(name, {}).get("forces")
    if bf is not None and pf:
        gain = f"; the search bought {100 * (pf - bf) / pf:+.0f}% on the force MAE"
    return f"paper configuration (trial {base.trial_id}): {errs(base)}\nbest trial ({best.trial_id}): {errs(best)}{gain}"


def results_table(outcome: SweepOutcome, unit: str, top: int = 10) -> Table:
    """Rich table of the top trials."""
    caption = None if outcome.test_sets else "no test set: no test errors (give dataset.n_test or dataset.test_path)"
    t = Table(title=f"{outcome.name}: top trials ({outcome.seconds:.0f} s)", caption=caption)
    cols = [(name, p, escape(f"{name} {p[0].upper()} MAE [{unit}{'/Å' if p == 'forces' else ''}]"))  # [..] is not markup
            for name in outcome.test_sets for p in keys.PROPS]
    for c in ("trial", "status", "CV val loss (mean ± std)", *(c for _, _, c in cols), "epochs"):
        t.add_column(c)
    for r in outcome.trials[:top]:
        std = f" ± {r.val_loss_std:.3g}" if r.val_loss_std is not None else ""
        maes = [r.tests.get(name, {}).get(p) for name, p, _ in cols]
        t.add_row(r.trial_id, r.status if not r.error else f"failed: {r.error[:60]}",
                  "–" if r.val_loss_mean is None else f"{r.val_loss_mean:.4g}{std}",
                  *("–" if v is None else f"{v:.4g}" for v in maes), str(r.epochs))
    return t


__all__ = ["PARENT", "SweepError", "SweepOutcome", "TrialSummary", "baseline_line", "results_table", "run_sweep"]
