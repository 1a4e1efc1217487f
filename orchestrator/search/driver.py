"""``sweep run``: Ray Tune + Optuna over configurations, k fold members per trial, MLflow tracking."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from orchestrator.search.context import FINALISE_GRACE, TestLabels, TrialClock, TrialData
from orchestrator.search.outcome import SweepOutcome, rank
from orchestrator.search.phases import Phase, PhaseRunner, TuneFailure, run_planned, share_resources
from orchestrator.search.plan import BudgetPlan
from orchestrator.search.record import end_open_runs, log_baseline, log_best, log_dataset, log_plan, reconcile
from orchestrator.search.state import SWEEP_JSON, SweepState, SweepStateError, check_sweep_name, new_sweep_name
from orchestrator.search.storage import latest_sweep, storage_root, tune_storage
from orchestrator.spec.sweep import SchedulerConfig, SweepSpec
from orchestrator.tracking import keys
from orchestrator.tracking.statuses import (
    FINALISED,
    INTERRUPTED,
    NOT_STARTED,
)
from orchestrator.tracking.store import ROLE, SWEEP_ID, Store, StoreNotFoundError, check_uri, git_commit
from schnet_model.data.heldout import WithTests, n_held_out, with_tests
from schnet_model.data.splits import SplitManifest, holdout, kfold, train_val


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; one line."""


def prepare_data(spec: SweepSpec):
    """Load the dataset and its test files; hold out the test set; k folds over the CV pool; the split manifest."""
    ds = spec.dataset
    joined = with_tests(ds)
    space = spec.space()  # every trial's embedding table must hold the data's elements: the smallest max_z
    joined.molecules.check_max_z(int(min(space["model.max_z"].extremes()) if "model.max_z" in space
                                     else spec.fixed()["model.max_z"]))
    loaded = joined.dataset
    n_pool = ds.n_train + ds.n_val
    pool, test = holdout(len(loaded.molecules), n_held_out(ds, loaded), ds.split_seed, loaded.test, loaded.train_pool,
                         n_needed=n_pool)
    if len(pool) > n_pool:
        pool, _ = train_val(pool, n_pool, 0, ds.split_seed)
    folds = kfold(pool, spec.cv.k, spec.cv.seed)
    return joined, SplitManifest.of(joined, ds.split_seed, test, folds=folds)


def run_sweep(spec: SweepSpec, *, name: str | None = None, address: str | None = None,
              console: Console | None = None) -> SweepOutcome:
    """Run a new sweep (named ``name``, default ``SPEC_NAME-YYYYmmdd-HHMMSS``) and return its trials, best first."""
    return _Sweep(spec, address, console).new(name)


def resume_sweep(spec: SweepSpec, name: str | None = None, *, address: str | None = None,
                 console: Console | None = None) -> SweepOutcome:
    """Continue an interrupted sweep (``name``, or the newest unfinished one of the spec)."""
    return _Sweep(spec, address, console).resume(name)


def extend_sweep(spec: SweepSpec, more: int, name: str | None = None, *, address: str | None = None,
                 console: Console | None = None) -> SweepOutcome:
    """Add ``more`` trials to a finished sweep (``name``, or the newest finished one of the spec): the same MLflow
    sweep run, a new Tune experiment (``NAME-more1``, …), the searcher told every earlier trial's result first (no
    trial re-run)."""
    return _Sweep(spec, address, console).extend(more, name)


class _Sweep:
    """One ``sweep run`` invocation: resources, data, the MLflow sweep run and ``sweep.json``, then the phases."""

    def __init__(self, spec: SweepSpec, address: str | None, console: Console | None) -> None:
        self.t_start = time.time()
        self.address, self.console = address, console or Console()
        _quiet()
        self.unshared = spec
        self.spec, self.node = self._resources(spec)
        self.root = storage_root(self.spec)

    def _resources(self, spec: SweepSpec) -> tuple[SweepSpec, dict[str, float]]:
        """The spec with ``resources: auto`` made explicit for this machine (a cluster's: once Ray is up), checked."""
        if spec.resources.gpus() > 0 and self.address is None:
            import torch

            if not torch.cuda.is_available():
                key = "gpus_per_trial" if spec.resources.gpus_per_trial else "gpus_per_fold"
                raise SweepError(f"resources.{key}={spec.resources.gpus()} but this machine has no GPU")
        from orchestrator.cluster.fit import local_nodes, trial_fit_error

        node = local_nodes()[0] if self.address is None else {}
        if self.address is None:
            spec = share_resources(spec, node, "this machine's", self.console)
            if err := trial_fit_error(spec, local_nodes(), "this machine has"):
                raise SweepError(err)
        return _clamp_grace(spec, self.console), node

    # -- what the user asked ---------------------------------------------------------------------------------
    def new(self, name: str | None) -> SweepOutcome:
        spec = self.spec
        if name is not None:
            _check_name(name)
            if (self.root / name).exists():
                raise SweepError(f"--name {name}: a sweep of that name exists under {self.root}; continue it with "
                                 "--resume, or choose another name")
        name = name or new_sweep_name(spec.name)
        store, joined, manifest = self._open(new=True)
        parent = self._open_sweep_run(store, name, joined.molecules, manifest)
        state = SweepState(name=name, spec_name=spec.name, parent_run_id=parent, tracking_uri=store.uri,
                           experiment=store.experiment, created=time.time())
        (self.root / name).mkdir(parents=True, exist_ok=True)
        state.save(self.root / name)
        planned = spec.search.time_budget is not None and spec.search.plan == "auto"
        return self._execute(state, store, joined, manifest, planned=planned)

    def resume(self, name: str | None) -> SweepOutcome:
        state = self._find(name, finished=False)
        store, joined, manifest = self._open(new=False)
        return self._execute(state, store, joined, manifest, planned=bool(state.plan), resume=True)

    def extend(self, more: int, name: str | None) -> SweepOutcome:
        state = self._find(name, finished=True)
        store, joined, manifest = self._open(new=False)
        return self._execute(state, store, joined, manifest, planned=False, more=more)

    # -- steps -----------------------------------------------------------------------------------------------
    def _find(self, name: str | None, finished: bool) -> SweepState:
        """The sweep to resume (``finished=False``) or extend (``True``), checked against what it recorded."""
        spec, root = self.spec, self.root
        if name is not None:
            _check_name(name)
        name = name if name is not None else latest_sweep(root, spec.name, finished=finished)
        if name is None or not (root / name / SWEEP_JSON).is_file():
            done = None if finished else latest_sweep(root, spec.name, finished=True)
            hint = f"; {done} finished: add trials with --more N" if done else ""
            what, verb = ("finished", "extend") if finished else ("unfinished", "resume")
            raise SweepError(f"no {what} sweep named {spec.name}-* under {root} to {verb}{hint}")
        try:
            state = SweepState.load(root / name / SWEEP_JSON)
        except SweepStateError as e:
            raise SweepError(str(e)) from None
        if finished and state.status != "finished":
            raise SweepError(f"sweep {name} did not finish: continue it with --resume first, "
                             "then add trials with --more")
        if not finished and state.status == "finished":
            raise SweepError(f"sweep {name} already finished: add trials with --more N")
        return state

    def _open(self, new: bool) -> tuple[Store, WithTests, SplitManifest]:
        """The tracking store (checked first: an unknown scheme or a server that does not answer is one line now, not
        after the data are read), the data and their splits, described."""
        uri = self.spec.tracking.resolved_uri()
        try:
            check_uri(uri)
        except StoreNotFoundError as e:
            raise SweepError(str(e)) from None
        joined, manifest = prepare_data(self.spec)
        if new:
            _note_out_of_range(self.spec, self.console)
        self.console.print(joined.dataset.molecules.describe())
        self.console.print(f"{self.spec.cv.k} folds over {sum(len(f.val) for f in manifest.folds)} molecules; "
                           f"{manifest.describe_tests()}")
        return Store(uri, self.spec.tracking.experiment or self.spec.name), joined, manifest

    def _open_sweep_run(self, store: Store, name: str, data, manifest: SplitManifest) -> str:
        """The MLflow sweep run of a new sweep: tags, the spec's values as params, the dataset, spec and splits."""
        from schnet_model import __version__

        spec = self.spec
        parent = store.client.create_run(store.exp_id, run_name=name, tags={
            ROLE: "sweep", SWEEP_ID: name, keys.SPEC_NAME: spec.name, keys.VERSION: __version__,
            keys.GIT_COMMIT: git_commit(), keys.DATASET_SHA: manifest.dataset_sha256}).info.run_id
        flat = {f"{s}.{k}": v for s in ("cv", "search", "resources") for k, v in getattr(spec, s).model_dump().items()}
        flat.update({f"model.{k}": v for k, v in spec.model.items()})
        flat.update({f"training.{k}": v for k, v in spec.training.items()})
        store.log(parent, {"k": spec.cv.k, **{f"n_{n}" if n == "test" else f"n_test_{n}": len(idx)
                                              for n, idx in manifest.test_sets().items()}}, params=flat)
        log_dataset(store, parent, data, manifest)
        with tempfile.TemporaryDirectory() as t:
            (Path(t) / keys.SPEC_JSON).write_text(spec.model_dump_json(indent=2))
            manifest.write(Path(t) / keys.SPLIT_JSON)
            store.client.log_artifact(parent, str(Path(t) / keys.SPEC_JSON))
            store.client.log_artifact(parent, str(Path(t) / keys.SPLIT_JSON))
        return parent

    def _start_ray(self, store: Store, state: SweepState) -> None:
        """A local Ray cluster (or the one at ``address``); on a cluster, ``resources: auto`` shared out by its
        largest node, and the storage checked to be shared by every node."""
        import ray

        if not ray.is_initialized():
            import logging

            # a local cluster's services listen on every interface (Ray 2.60 has no loopback-only option), behind the
            # token Ray ≥ 2.59 generates for local clusters; no dashboard (docs/cluster.md, "What a sweep exposes")
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     **({} if self.address else {"num_cpus": os.cpu_count()}))
            stop_on_sigterm()
        from orchestrator.cluster.fit import cluster_nodes, trial_fit_error
        from orchestrator.cluster.shared_storage import StorageNotShared, check_storage_shared

        if self.address is not None and self.spec.resources.auto:
            nodes = [n for n in cluster_nodes() if n.get("CPU", 0.0) >= 1]
            if not nodes:
                raise SweepError("resources: auto shares a node among the trials, but no node of the cluster has a CPU "
                                 "for trials yet (an autoscaling cluster starts workers on demand): give resources "
                                 "explicitly, e.g. --set resources.cpus_per_trial=4 "
                                 "--set resources.gpus_per_trial=0.25")
            self.node = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
            self.spec = share_resources(self.spec, self.node, "the largest node's", self.console)
        if self.address is not None and (err := trial_fit_error(self.spec, cluster_nodes(),
                                                                 "the cluster's largest node has")):
            err = err.replace("no trial could ever start; use", "a trial waits for the autoscaler (or forever without "
                              "one); or use")
            self.console.print(f"note: {err}")
        try:
            check_storage_shared(tune_storage(self.spec), self.root / state.name / SWEEP_JSON)
        except StorageNotShared as e:
            store.end(state.parent_run_id, "FAILED")
            raise SweepError(str(e)) from None

    def _execute(self, state: SweepState, store: Store, joined, manifest: SplitManifest, *, planned: bool,
                 resume: bool = False, more: int | None = None) -> SweepOutcome:
        """Run the sweep's phases (a budget plan's rungs, or one Tune experiment), then record its outcome."""
        import ray

        self._start_ray(store, state)
        spec, name, sweep_dir = self.spec, state.name, self.root / state.name
        if more:  # a new Tune experiment of the same sweep
            state.tune_experiments.append(f"{name}-more{len(state.tune_experiments)}")
        if resume or more:  # an interrupted (or killed) sweep runs again; a finished one runs more trials
            state.status = "running"
            state.save(sweep_dir)
            store.client.update_run(state.parent_run_id, status="RUNNING")
        data = joined.molecules  # the dataset's molecules, then every test file's
        tests = manifest.test_sets()
        shared = TrialData(ray.put(data), tests, {n: TestLabels.of(data, idx) for n, idx in tests.items()})
        folds = manifest.fold_pairs()
        runner = PhaseRunner(spec, store, state, console=self.console, data=shared, test_sets=list(tests))
        experiments = state.tune_experiments
        earlier = [replace(t, earlier=True) for e in experiments[:-1] for t in runner.restored(e)]
        baseline = None
        budget = spec.search.time_budget

        def record_stop() -> None:  # SIGTERM (the watcher thread): interrupted in sweep.json and MLflow at once
            state.status = "interrupted"
            state.save(sweep_dir)
            _end_runs(store, name, state.parent_run_id)

        _ON_STOP.append(record_stop)
        try:
            if planned:
                plan = BudgetPlan.from_dict(state.plan) if state.plan else None
                now, baseline, budget_ran_out = run_planned(runner, plan, state, unshared=self.unshared,
                                                            node=self.node, folds=folds, sweep_dir=sweep_dir,
                                                            resume=resume)
                earlier = []
            else:
                phase = Phase(experiments[-1], spec, folds, more or spec.search.num_samples, spec.max_epochs(),
                              asha=True, points=None if more else spec.initial_points() or None,
                              clock=TrialClock(deadline=time.time() + budget if budget else None),
                              tune_budget=budget + FINALISE_GRACE if budget else None,
                              optuna_seed=spec.search.seed + len(experiments) - 1, warm=earlier if more else [])
                now, budget_ran_out = runner.run(phase, restore=resume)
        except TuneFailure as e:  # every run ended, the sweep resumable: one line, no traceback
            end_open_runs(store, name)
            store.end(state.parent_run_id, "KILLED")
            state.status = "interrupted"
            state.save(sweep_dir)
            raise SweepError(f"sweep {name} stopped: Ray Tune failed ({e}); its MLflow runs are ended and its state "
                             f"saved: continue it with --resume") from None
        finally:
            _ON_STOP.remove(record_stop)
        interrupted = any(t.status == INTERRUPTED for t in now) or (
            not budget_ran_out and not planned and
            (len(now) < (more or spec.search.num_samples) or any(t.status == NOT_STARTED for t in now)))
        return self._finish(state, store, sorted(now + earlier, key=rank), data=data, manifest=manifest,
                            baseline=baseline, interrupted=interrupted, planned=planned)

    def _finish(self, state: SweepState, store: Store, trials: list, *, data, manifest: SplitManifest, baseline,
                interrupted: bool, planned: bool) -> SweepOutcome:
        """MLflow reconciled with Tune's trials, the best trial and the baseline logged, ``sweep.json`` closed."""
        import ray

        name, parent = state.name, state.parent_run_id
        reconcile(store, name, trials)
        best = next((t for t in trials if t.status in FINALISED), None)
        if best is not None:
            log_best(store, parent, name, best=best, data=data, manifest=manifest)
        store.end(parent, "KILLED" if interrupted else "FINISHED")
        state.status = "interrupted" if interrupted else "finished"
        state.save(self.root / name)
        outcome = SweepOutcome(name, self.root / name, parent, trials=trials, best=best,
                               seconds=time.time() - self.t_start,
                               cpus=float(ray.cluster_resources().get("CPU", 1.0)), energy_unit=data.energy_unit,
                               experiment_id=store.exp_id, test_sets=list(manifest.test_sets()),
                               interrupted=interrupted, baseline=baseline)
        if baseline is not None:
            log_baseline(store, parent, baseline, best)
        store.log(parent, {"wall_seconds": outcome.seconds,
                           "train_seconds": sum(t.train_seconds for t in trials if not t.earlier)})
        if planned:
            log_plan(store, name, parent, state)
        return outcome


_ON_STOP: list = []
"""What a SIGTERM records at once, in the watcher thread: the running sweep marked interrupted (Slurm kills the job's
processes KillWait seconds after its SIGTERM, and the job's Ray, killed by the same signal, may leave the main thread
blocked inside Ray until then: a Python signal handler would not run)."""
_WAKE: list = []  # the socket pair Python's signal trampoline writes to, and its watcher thread (once per process)


def stop_on_sigterm() -> None:
    """SIGTERM (Slurm's time limit, scancel, preemption; a container's stop) ends a sweep as Ctrl-C does: Tune saves
    its state, the runs are marked interrupted, ``--resume`` continues. The record is written by a watcher thread the
    signal wakes at once (:data:`_ON_STOP`); the main thread, when it next runs Python, stops Tune gracefully (Tune's
    SIGUSR1 handler) or, outside Tune's run, raises KeyboardInterrupt. Installed again once Ray is up: ``ray.init``
    replaces the process's SIGTERM handler with one that only logs and exits."""
    import signal
    import socket

    if threading.current_thread() is not threading.main_thread():
        return
    if not _WAKE:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        _WAKE.extend([reader, writer])
        threading.Thread(target=_watch, args=(reader,), daemon=True, name="sweep-sigterm").start()

    def on_term(signum, frame) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if callable(tune_stop):
            tune_stop(signal.SIGUSR1, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.set_wakeup_fd(_WAKE[1].fileno(), warn_on_full_buffer=False)


def _watch(reader) -> None:
    """Python's signal trampoline writes each signal's number to the wakeup socket as it arrives, whatever the main
    thread is doing: at a SIGTERM, write the records of :data:`_ON_STOP`."""
    import signal

    while data := reader.recv(64):
        if signal.SIGTERM in data:
            for record in list(_ON_STOP):
                try:
                    record()
                except Exception:  # noqa: BLE001 (a record that cannot be written: the next SIGTERM tries again)
                    pass


def _end_runs(store: Store, name: str, parent: str) -> None:
    """Every open run of the sweep ended KILLED (its trials ``interrupted``); what cannot be written is left to the
    sweep's own end or to ``--resume``."""
    try:
        store.end(parent, "KILLED")  # first: the Tune callback reopens no run of an ended sweep (a retried trial)
        end_open_runs(store, name)
    except Exception:  # noqa: BLE001 (a store busy with the driver's own write: the sweep's end writes it)
        pass


def _check_name(name: str) -> None:
    try:
        check_sweep_name(name)
    except SweepStateError as e:
        raise SweepError(str(e)) from None


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
    # a failed trial is said in one line by the live view (search.progress), not as Tune's traceback
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    if _no_trial_traceback not in controller.filters:
        controller.addFilter(_no_trial_traceback)
    warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")


def _no_trial_traceback(record) -> bool:
    """Logging filter: drop Tune's "Trial task failed" traceback (the live view says it in one line)."""
    return not str(record.msg).startswith("Trial task failed")


def _note_out_of_range(spec: SweepSpec, console: Console) -> None:
    for point in spec.initial_points():
        for key, value in point.items():
            d = spec.space()[key]
            if d.kind != "choice" and not (d.extremes()[0] <= value <= d.extremes()[1]):
                console.print(f"note: the first trial's {key}={value} lies outside the searched range "
                              f"{d.extremes()}; it is evaluated anyway (the paper configuration as a baseline)")
            elif d.kind == "choice" and value not in d.extremes():
                console.print(f"note: the first trial's {key}={value!r} is not among the choices {d.extremes()}")


__all__ = ["SweepError", "extend_sweep", "prepare_data", "resume_sweep", "run_sweep", "stop_on_sigterm"]
