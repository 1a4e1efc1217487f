"""``sweep run``: Ray Tune + Optuna over configurations, k fold members per trial, MLflow tracking."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from rich.console import Console

from orchestrator.search.outcome import SweepOutcome, rank
from orchestrator.search.phases import Phase, PhaseRunner, TuneFailure, run_planned, share_resources
from orchestrator.search.plan import BudgetPlan
from orchestrator.search.record import end_open_runs, log_baseline, log_best, log_dataset, log_plan, reconcile
from orchestrator.search.storage import latest_sweep, storage_root, tune_storage, write_json
from orchestrator.search.trial import FINALISE_GRACE, TrialClock
from orchestrator.spec.sweep import SchedulerConfig, SweepSpec
from orchestrator.tracking import keys
from orchestrator.tracking.statuses import (
    FINALISED,
    INTERRUPTED,
    NOT_STARTED,
)
from orchestrator.tracking.store import ROLE, SWEEP_ID, Store, StoreNotFoundError, check_uri, git_commit
from schnet_model.data.heldout import n_held_out, with_tests
from schnet_model.data.splits import SplitManifest, holdout, kfold, train_val
from schnet_model.files import sha256 as checksum


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
        spec = share_resources(spec, node, "this machine's", console)
    if address is None and (err := trial_fit_error(spec, local_nodes(), "this machine has")):
        raise SweepError(err)
    spec = _clamp_grace(spec, console)
    root = storage_root(spec)
    if resume or more:
        what = "finished" if more else "unfinished"
        if isinstance(resume, str) and (not resume or any(c in resume for c in "/\\") or resume in (".", "..")):
            raise SweepError(f"--name {resume}: expected a sweep's name, without path separators (sweep list shows them)")
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
    try:  # an unknown scheme or a server that does not answer: one line now, not after the data are read
        check_uri(uri)
    except StoreNotFoundError as e:
        raise SweepError(str(e)) from None

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
        log_dataset(store, parent, data, manifest)
        with tempfile.TemporaryDirectory() as t:
            (Path(t) / keys.SPEC_JSON).write_text(spec.model_dump_json(indent=2))
            manifest.write(Path(t) / keys.SPLIT_JSON)
            store.client.log_artifact(parent, str(Path(t) / keys.SPEC_JSON))
            store.client.log_artifact(parent, str(Path(t) / keys.SPLIT_JSON))
        (root / name).mkdir(parents=True, exist_ok=True)
        meta = {"name": name, "spec_name": spec.name, "parent_run_id": parent, "tracking_uri": uri,
                "experiment": experiment, "status": "running", "created": time.time()}
        write_json(root / name / "sweep.json", meta)

    if not ray.is_initialized():
        import logging

        # a local cluster's services listen on every interface (Ray 2.60 has no loopback-only option), behind the
        # token Ray ≥ 2.59 generates for local clusters; no dashboard (docs/cluster.md, "What a sweep exposes")
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
        spec = share_resources(spec, node, "the largest node's", console)
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
        write_json(root / name / "sweep.json", meta)
        store.client.update_run(parent, status="RUNNING")
    elif resume:  # an interrupted (or killed) sweep runs again
        meta["status"] = "running"
        write_json(root / name / "sweep.json", meta)
        store.client.update_run(parent, status="RUNNING")
    test_sets = list(tests)
    runner = PhaseRunner(spec, store, name, parent, uri, experiment, console, base, test_sets)
    budget = spec.search.time_budget
    planned = bool(meta.get("plan")) if (resume or more) else (budget is not None and spec.search.plan == "auto")
    planned = planned and not more
    earlier = [replace(t, earlier=True) for e in experiments[:-1] for t in runner.restored(e)]
    baseline = None
    try:
        if planned:
            plan = BudgetPlan.from_dict(meta["plan"]) if meta.get("plan") else None
            now, baseline, budget_ran_out = run_planned(runner, unshared, node, plan, folds, meta, root / name, bool(resume))
            earlier = []
        else:
            phase = Phase(experiments[-1], spec, folds, more or spec.search.num_samples, spec.max_epochs(),
                          asha=True, points=None if more else spec.initial_points() or None,
                          clock=TrialClock(deadline=time.time() + budget if budget else None),
                          tune_budget=budget + FINALISE_GRACE if budget else None,
                          optuna_seed=spec.search.seed + len(experiments) - 1)
            if more:
                phase = replace(phase, warm=earlier)
            now, budget_ran_out = runner.run(phase, restore=bool(resume) and not more)
    except TuneFailure as e:  # every run ended, the sweep resumable: one line, no traceback
        end_open_runs(store, name)
        store.end(parent, "KILLED")
        meta["status"] = "interrupted"
        write_json(root / name / "sweep.json", meta)
        raise SweepError(f"sweep {name} stopped: Ray Tune failed ({e}); its MLflow runs are ended and its state saved: "
                         f"continue it with --resume") from None
    interrupted = any(t.status == INTERRUPTED for t in now) or (
        not budget_ran_out and not planned and
        (len(now) < (more or spec.search.num_samples) or any(t.status == NOT_STARTED for t in now)))
    trials = sorted(now + earlier, key=rank)
    reconcile(store, name, trials)
    best = next((t for t in trials if t.status in FINALISED), None)
    if best is not None:
        log_best(store, parent, name, best, data, manifest)
    store.end(parent, "KILLED" if interrupted else "FINISHED")
    meta["status"] = "interrupted" if interrupted else "finished"
    write_json(root / name / "sweep.json", meta)
    outcome = SweepOutcome(name, root / name, parent, trials, best, time.time() - t_start,
                           cpus=float(ray.cluster_resources().get("CPU", 1.0)), energy_unit=data.energy_unit,
                           experiment_id=store.exp_id, test_sets=test_sets, interrupted=interrupted, baseline=baseline)
    if baseline is not None:
        log_baseline(store, parent, baseline, best)
    store.log(parent, {"wall_seconds": outcome.seconds,
                       "train_seconds": sum(t.train_seconds for t in trials if not t.earlier)})
    if planned:
        log_plan(store, name, parent, meta)
    return outcome


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


__all__ = ["SweepError", "prepare_data", "run_sweep"]
