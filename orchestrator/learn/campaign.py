"""``sweep learn``: explore → select → label → retrain, for R rounds, one MLflow parent run per campaign.

Round r (0 … R) trains on dataset version r and evaluates the ensemble on the fixed test set(s)
(``dataset.test_path``: never selected from, never trained on); rounds before the last then explore
with the ensemble (Langevin MD from frames of the current data, stopped where the force std
crosses the threshold), select N molecules below the threshold (:mod:`orchestrator.learn.select`), label them with the
reference method and write dataset version r + 1 (:mod:`orchestrator.learn.dataset`).

Training: round 0 runs the spec as given (a search when it searches); later rounds train the best
configuration of round 0 with all k folds from scratch on the grown data (one trial, no search): on
a few hundred molecules a search per round costs many times the labels' worth, the configuration
found on the starting data stays a good one, and training from scratch keeps every round's models
comparable (no dependence on the order data arrived). Each round is a full sweep in the MLflow store
(fold models, out-of-fold predictions, a registered, recalibrated ensemble), tagged with its campaign
and round.

State: ``<out>/<campaign>/campaign.json`` is rewritten after every completed round; ``--resume``
continues the newest unfinished campaign of the spec at its first incomplete round (a round that
crashed part-way is run again from its start).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from orchestrator.learn.dataset import Version, grow, initial
from orchestrator.learn.select import (
    POOL_FACTOR,
    STRATEGIES,
    SelectError,
    Selection,
    kelvin,
    parse_temperatures,
    parse_threshold,
    select,
    threshold_eV,
    write_selection,
)
from orchestrator.spec.sweep import SweepSpec
from orchestrator.tracking import keys
from orchestrator.tracking.store import PARENT, ROLE, SWEEP_ID, Store, no_artifact_progress_bar
from schnet_model.data.molecules import DataError
from schnet_model.files import write_text

CAMPAIGN_JSON = "campaign.json"
CAMPAIGN_TAG, ROUND_TAG = "sweep.campaign", "sweep.round"


class LearnError(ValueError):
    """A campaign that cannot start or continue (one line)."""


@dataclass(kw_only=True)
class LearnOptions:
    """How a campaign explores, selects and labels (all recorded on its MLflow run)."""

    rounds: int = 3
    per_round: int = 20
    temperature: float | list[float] = 500.0  # K, exploration MD: one, or a ladder shared out over the runs
    strategy: str = "uncertainty"  # or random
    method: str = "gfn2-xtb"  # reference labels (or pyscf:<functional>/<basis>)
    trajectories: int = 16  # exploration MD runs per round
    steps: int = 400  # MD steps per run at most (0.5 fs each)
    every: int = 10  # a candidate frame every `every` steps
    threshold: str = "4x"  # a run stops when a per-atom force std exceeds it: eV/Å, or "4x": 4 × the median on the data
    seed: int = 0
    # the uncertainty selection clusters the pool_factor × per_round most uncertain candidates
    pool_factor: int = POOL_FACTOR

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise LearnError(f"--strategy: {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        from schnet_model.data.generate import parse_method

        try:
            kind, _, _ = parse_method(self.method)
        except ValueError as e:
            raise LearnError(f"--method: {e}") from None
        import importlib.util

        package, extra = ("tblite", "generate") if kind == "gfn2-xtb" else ("pyscf", "dft")
        if importlib.util.find_spec(package) is None:
            raise LearnError(f"--method {self.method}: the labels need {package}; pip install -e '.[{extra}]'")
        for name in ("rounds", "per_round", "trajectories", "steps", "every", "pool_factor"):
            if getattr(self, name) < (0 if name == "rounds" else 1):
                raise LearnError(f"--{name.replace('_', '-')}: must be ≥ {0 if name == 'rounds' else 1} "
                                 f"(got {getattr(self, name)})")
        try:
            self.temperature = parse_temperatures(self.temperature)
            parse_threshold(self.threshold)
        except SelectError as e:
            raise LearnError(str(e)) from None
        self.threshold = str(self.threshold)


@dataclass
class RoundRecord:
    """What one completed round left."""

    round: int
    dataset: dict[str, Any]  # Version as a dict
    sweep: str
    run_id: str
    metrics: dict[str, float]  # test errors (energy unit, /Å) and calibration per named test set
    selected: str | None = None  # extended XYZ of the molecules chosen for the next round
    selection: dict[str, float] | None = None  # candidates, runs stopped, threshold (eV/Å), median stds (eV/Å)
    seconds: float = 0.0


@dataclass
class Campaign:
    """``campaign.json``: the options, the spec, the completed rounds."""

    name: str
    spec_name: str
    options: dict[str, Any]
    run_id: str
    tracking_uri: str
    experiment: str
    params: dict[str, Any] | None = None  # the configuration later rounds train (round 0's best)
    rounds: list[RoundRecord] = field(default_factory=list)
    status: str = "running"

    def save(self, root: Path) -> None:
        write_text(root / self.name / CAMPAIGN_JSON, json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> Campaign:
        d = json.loads(path.read_text())
        d["rounds"] = [RoundRecord(**r) for r in d["rounds"]]
        return cls(**d)


def latest_unfinished(root: Path, spec_name: str) -> Path | None:
    """The newest ``campaign.json`` of ``spec_name`` under ``root`` whose campaign did not finish."""
    found = sorted(root.glob(f"{spec_name}-learn-*/{CAMPAIGN_JSON}"))
    found = [p for p in found if json.loads(p.read_text()).get("status") != "finished"]
    return found[-1] if found else None


def round_spec(spec: SweepSpec, version: Version, name: str, params: dict[str, Any] | None) -> SweepSpec:
    """The sweep spec of one round: its dataset version as the CV pool (all of it), the fixed test files; from round 1
    the one configuration ``params`` (no search)."""
    s = spec.model_copy(deep=True)
    s.name = name
    s.tracking = s.tracking.model_copy(update=dict(experiment=spec.tracking.experiment or spec.name))
    frac = spec.dataset.n_val / (spec.dataset.n_train + spec.dataset.n_val)
    n_val = min(max(1, round(version.n_molecules * frac)), version.n_molecules - 1)
    s.dataset = s.dataset.model_copy(update=dict(path=Path(version.path), format="md17", download=None, n_test=None,
                                                 n_train=version.n_molecules - n_val, n_val=n_val, energy_unit=None,
                                                 unit=None))
    if params is not None:
        s.search = s.search.model_copy(update=dict(num_samples=1, initial_points=[params] if params else [],
                                                   time_budget=None, plan="off"))
    return s


def evaluate(ens, cfg) -> dict[str, float]:
    """Test errors and calibration of ``ens`` on every named test file of ``cfg`` (never trained on)."""
    from orchestrator.ensemble.report import PropertyErrors, build_report
    from schnet_model.data.heldout import with_tests
    from schnet_model.training.metrics import mae_rmse

    joined = with_tests(cfg)
    out: dict[str, float] = {}
    for name, held in joined.files.items():
        mols = joined.molecules.subset(held.idx)
        raw = ens.predict(mols, calibrated=False)
        e, f = raw.energy - mols.E, raw.forces - mols.F
        out[f"{name}_energy_mae"], out[f"{name}_energy_rmse"] = mae_rmse(e)
        out[f"{name}_forces_mae"], out[f"{name}_forces_rmse"] = mae_rmse(f)
        pe, pf = PropertyErrors("energy", ens.energy_unit), PropertyErrors("forces", f"{ens.energy_unit}/Å")
        pe.add(e, raw.energy_std)
        pf.add(f, raw.forces_std, mols.atom_ptr)
        out.update(build_report([pe, pf], ens.calibration).flat(f"{name}_"))
    return out


@dataclass
class Trained:
    """One round's training: its sweep, the k-fold ensemble and its test errors."""

    outcome: Any  # orchestrator.search.driver.SweepOutcome
    ensemble: Any  # schnet_model.ensemble.Ensemble, rebuilt from the sweep's best trial
    metrics: dict[str, float]  # evaluate(): test errors and calibration per named test set


def train_round(spec: SweepSpec, version: Version, name: str, *, params: dict[str, Any] | None, uri: str,
                address: str | None = None, console: Console | None = None) -> Trained:
    """Train a dataset version as one round does: the sweep of :func:`round_spec`, its best trial's k folds as an
    ensemble (tracking store ``uri``), evaluated on the fixed test sets. Raises :class:`LearnError` when no trial
    completed."""
    from orchestrator.ensemble.assemble import resolve
    from orchestrator.search.driver import run_sweep

    s = round_spec(spec, version, name, params)
    outcome = run_sweep(s, address=address, console=console)
    if outcome.best is None:
        raise LearnError(f"sweep {outcome.name} ended with no completed trial")
    with no_artifact_progress_bar():
        ens = resolve(outcome.name, uri, rebuild=True, console=console).ensemble
    return Trained(outcome, ens, evaluate(ens, s.dataset))


@dataclass
class RoundChoice:
    """What one round explored and chose."""

    trajectories: list  # schnet_model.explore.Trajectory per exploration run
    threshold: float  # eV/Å, the stopping threshold and the upper trust level of the selection
    selection: Selection

    @property
    def stats(self) -> dict[str, float]:
        """The selection's statistics, the exploration runs stopped and the threshold (eV/Å): what a round logs."""
        stopped = sum(t.stopped_at is not None for t in self.trajectories)
        return {**self.selection.stats(), "trajectories_stopped": stopped, "threshold_eV_per_A": self.threshold}


def choose_round(ens, R: np.ndarray, z: np.ndarray, opts: LearnOptions, r: int) -> RoundChoice:
    """Round ``r``'s exploration and selection: ``opts.trajectories`` Langevin runs of ``ens`` from frames of the
    round's data (``R`` [n, n_atoms, 3] Å, ``z`` [n_atoms]), seeded by (``opts.seed``, ``r``), each stopped at the
    threshold, then ``opts.per_round`` of their frames chosen by ``opts.strategy`` (seed ``opts.seed * 1000 + r``)."""
    from ase import Atoms

    from schnet_model.explore import explore

    rng = np.random.default_rng([opts.seed, r])
    data = [Atoms(numbers=z, positions=x) for x in R]
    starts = [data[i] for i in rng.choice(len(R), opts.trajectories, replace=len(R) < opts.trajectories)]
    threshold = threshold_eV(opts.threshold, ens, data)  # eV/Å
    trajs = explore(ens, starts, opts.temperature, opts.steps, threshold, seed=opts.seed * 1000 + r, every=opts.every)
    frames = [f for t in trajs for f in t.frames]
    sel = select(ens, frames, min(opts.per_round, len(frames)), opts.strategy, seed=opts.seed * 1000 + r,
                 max_score=threshold, pool_factor=opts.pool_factor)
    return RoundChoice(trajs, threshold, sel)


def run_campaign(spec: SweepSpec, opts: LearnOptions, out: Path, *, resume: bool = False, address: str | None = None,
                 console: Console | None = None) -> Campaign:
    """Run (or resume) an active-learning campaign; returns it with every round's record."""
    from schnet_model.data.generate import relabel, theory
    from schnet_model.data.load import load_dataset
    from schnet_model.data.splits import train_val

    console = console or Console()
    if not spec.dataset.test_files():
        raise LearnError(f"{spec.name}: sweep learn needs a fixed test set that no round selects from or trains on: "
                         "give dataset.test_path (e.g. --set dataset.test_path=test_1000K.npz); "
                         "the dataset file grows every round")
    out = out.resolve()
    uri = spec.tracking.resolved_uri()
    experiment = spec.tracking.experiment or spec.name
    store = Store(uri, experiment)
    if resume:
        path = latest_unfinished(out, spec.name)
        if path is None:
            raise LearnError(f"no unfinished campaign {spec.name}-learn-* under {out} to resume")
        camp = Campaign.load(path)
        opts = LearnOptions(**camp.options)
        console.print(f"resuming campaign {camp.name} at round {len(camp.rounds)} of {opts.rounds}")
    else:
        name = f"{spec.name}-learn-{datetime.now():%Y%m%d-%H%M%S}"
        run_id = store.client.create_run(store.exp_id, run_name=name, tags={ROLE: "campaign", SWEEP_ID: name,
                                                                             keys.SPEC_NAME: spec.name}).info.run_id
        store.log(run_id, {}, params={**{k: v for k, v in asdict(opts).items()},
                                      "test_sets": ",".join(spec.dataset.test_files())})
        camp = Campaign(name, spec.name, asdict(opts), run_id, uri, experiment)
        (out / name).mkdir(parents=True, exist_ok=True)
    root = out / camp.name
    for stale in store.find(**{ROLE: "round", CAMPAIGN_TAG: camp.run_id}):  # a round that crashed part-way
        if stale.info.status == "RUNNING" and int(stale.data.tags.get(ROUND_TAG, -1)) >= len(camp.rounds):
            store.end(stale.info.run_id, "FAILED")

    if camp.rounds:
        nxt = root / f"data_r{len(camp.rounds)}.json"
        if not nxt.is_file():
            raise LearnError(f"{root}: round {len(camp.rounds) - 1} finished but {nxt.name} is missing")
        version = Version(**json.loads(nxt.read_text()))
    else:
        path0 = root / "data_r0.npz"
        if (root / "data_r0.json").is_file():
            version = Version(**json.loads((root / "data_r0.json").read_text()))
        else:
            ds = load_dataset(spec.dataset)
            mols = ds.molecules
            n = spec.dataset.n_train + spec.dataset.n_val
            if n > len(mols):
                raise DataError(f"{spec.dataset.path}: dataset.n_train + dataset.n_val = {n} "
                                f"but the file has {len(mols)} molecules")
            tr, va = train_val(np.arange(len(mols)), spec.dataset.n_train, spec.dataset.n_val, spec.dataset.split_seed)
            version = initial(mols, np.concatenate([tr, va]), path0, mols.meta.get("theory", "unknown"))
    console.print(f"campaign {camp.name}: {opts.rounds} rounds × {opts.per_round} molecules "
                  f"({opts.strategy} selection, "
                  f"{opts.method} labels, exploration MD at {kelvin(opts.temperature)}); "
                  f"data {version.n_molecules} molecules; "
                  f"state {root / CAMPAIGN_JSON}", soft_wrap=True)

    for r in range(len(camp.rounds), opts.rounds + 1):
        t0 = time.time()
        rid = store.client.create_run(store.exp_id, run_name=f"{camp.name}-round{r}",
                                      tags={ROLE: "round", PARENT: camp.run_id, CAMPAIGN_TAG: camp.run_id,
                                            ROUND_TAG: str(r)}).info.run_id
        store.client.log_artifact(rid, version.path)
        store.client.log_artifact(rid, str(version.sidecar()))
        store.log(rid, {"n_molecules": version.n_molecules, "added": version.added},
                  params={"dataset_sha256": version.sha256, "dataset_parent_sha256": version.parent_sha256})
        # -- retrain -------------------------------------------------------------------------------------------
        try:
            trained = train_round(spec, version, f"{camp.name}-r{r}", params=camp.params if r else None, uri=uri,
                                  address=address, console=console)
        except LearnError as e:
            store.end(rid, "FAILED")
            raise LearnError(f"round {r}: {e}") from None
        outcome, ens, metrics = trained.outcome, trained.ensemble, trained.metrics
        if r == 0:
            camp.params = dict(outcome.best.params)  # {} when the spec searches nothing
        store.client.set_tag(outcome.parent_run_id, CAMPAIGN_TAG, camp.run_id)
        store.client.set_tag(outcome.parent_run_id, ROUND_TAG, str(r))
        store.client.set_tag(rid, "sweep.round_sweep", outcome.name)
        ens.save(root / f"ensemble_r{r}", overwrite=True)  # the campaign's own (a resumed round writes it again)
        store.log(rid, metrics)
        store.log(camp.run_id, {"n_molecules": version.n_molecules, **metrics}, step=r)
        u = ens.energy_unit
        console.print(f"round {r}: {version.n_molecules} molecules; " + "; ".join(
            f"{t}: energy MAE {metrics[f'{t}_energy_mae']:.4g} {u}, forces MAE {metrics[f'{t}_forces_mae']:.4g} {u}/Å"
            for t in spec.dataset.test_files()), soft_wrap=True)
        record = RoundRecord(r, asdict(version), outcome.name, rid, metrics)
        # -- explore, select, label -----------------------------------------------------------------------------
        if r < opts.rounds:
            with np.load(version.path, allow_pickle=False) as npz:
                R, z = npz["R"], npz["z"]
            choice = choose_round(ens, R, z, opts, r)
            chosen, sel_metrics = choice.selection.chosen, choice.stats
            sel_path = write_selection(chosen, root / f"selected_r{r}.extxyz")
            record.selection = sel_metrics
            store.log(rid, sel_metrics)
            store.client.log_artifact(rid, str(sel_path))
            labelled = relabel({"R": np.stack([a.positions for a in chosen]), "z": z}, opts.method)
            version = grow(version, labelled, root / f"data_r{r + 1}.npz", round_=r + 1, chosen_by=outcome.name,
                           strategy=opts.strategy, method=opts.method)
            record.selected = str(sel_path)
            console.print(f"round {r}: {sel_metrics['candidates']} candidates "
                          f"from {len(choice.trajectories)} MD runs at "
                          f"{kelvin(opts.temperature)} ({sel_metrics['trajectories_stopped']} stopped by the "
                          f"{choice.threshold:.3g} eV/Å threshold, {opts.threshold}); {len(chosen)} selected "
                          f"({opts.strategy}; median max force std "
                          f"{sel_metrics['selected_forces_std_max_median']:.3f} eV/Å "
                          f"vs {sel_metrics['candidates_forces_std_max_median']:.3f} over candidates), labelled with "
                          f"{theory(opts.method)} → {version.path}", soft_wrap=True)
        record.seconds = time.time() - t0
        store.end(rid, "FINISHED")
        camp.rounds.append(record)
        camp.save(out)
    camp.status = "finished"
    camp.save(out)
    store.end(camp.run_id, "FINISHED")
    return camp


__all__ = ["Campaign", "LearnError", "LearnOptions", "RoundRecord", "RoundChoice", "choose_round", "Trained",
           "evaluate", "latest_unfinished", "round_spec", "run_campaign", "train_round"]
