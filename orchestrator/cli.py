"""The ``sweep`` command line (Typer)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Train SchNet potentials, search hyperparameters, build ensembles.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: generate and inspect.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@app.command()
def train(
    spec: Annotated[Path, typer.Argument(help="spec YAML (dataset, model, training sections)")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: dotted.key=value (YAML-typed)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="model directory to write (default runs/<name>-<time>)")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a model directory this tool wrote at --out; "
                                            "anything else is never replaced")] = False,
) -> None:
    """Train one SchNet with the spec's fixed hyperparameters and write a model directory."""
    from orchestrator.spec.load import SpecError
    from orchestrator.spec.sweep import load_sweep_spec

    try:  # the spec first: a bad one is reported before torch is imported
        sweep_spec = load_sweep_spec(spec, set_ or [])
    except SpecError as e:
        fail(str(e))
    from orchestrator.train import run_train
    from schnet_model.data.molecules import DataError
    from schnet_model.training.errors import NonFiniteLossError, NonFinitePrediction

    train_spec = sweep_spec.train_spec()
    if sweep_spec.space():
        console.print(f"the spec searches {', '.join(sweep_spec.space())}; training its first configuration "
                      "(the paper's, or search.initial_points[0])")
    name = train_spec.name or spec.stem
    out = out or Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    from schnet_model.files import DestinationError, check_destination
    from schnet_model.model_dir import CONFIG

    try:  # before the training: a destination that cannot be written would lose it
        check_destination(out, "model directory", CONFIG, overwrite)
    except DestinationError as e:
        fail(str(e))
    try:
        run_train(train_spec, out, console, overwrite=overwrite)
    except DataError as e:
        fail(str(e))
    except NonFiniteLossError as e:
        fail(f"training diverged: {e}", 1)
    except NonFinitePrediction as e:
        fail(str(e), 1)
    except (FileExistsError, DestinationError) as e:
        fail(str(e))


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: dotted.key=value (YAML-typed)")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (auto, ray://HOST:10001); default: a local cluster")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the newest unfinished sweep of this spec")] = False,
    name: Annotated[
        str | None, typer.Option(help="with --resume or --more: the sweep to continue or extend; otherwise the new "
                                 "sweep's name (default: the spec's name and the time)")
    ] = None,
    more: Annotated[
        int | None,
        typer.Option("--more", min=1, help="add this many trials to the newest finished sweep of SPEC "
                     "(the same MLflow sweep run; the searcher told the earlier results)"),
    ] = None,
) -> None:
    """Search hyperparameters with Ray Tune + Optuna; every trial trains k fold members; tracked in MLflow."""
    from orchestrator.spec.load import SpecError
    from orchestrator.spec.sweep import load_sweep_spec

    try:  # the spec first: a bad one is reported before torch, Ray and MLflow are imported
        sweep_spec = _with_slurm_budget(load_sweep_spec(spec, set_ or []))
    except SpecError as e:
        fail(str(e))
    from orchestrator.search.driver import SweepError, extend_sweep, resume_sweep, run_sweep, stop_on_sigterm
    from orchestrator.search.outcome import baseline_line, results_table
    from orchestrator.tracking.store import ui_link
    from schnet_model.data.molecules import DataError

    stop_on_sigterm()
    try:
        if more:
            outcome = extend_sweep(sweep_spec, more, name, address=address, console=console)
        elif resume:
            outcome = resume_sweep(sweep_spec, name, address=address, console=console)
        else:
            outcome = run_sweep(sweep_spec, name=name, address=address, console=console)
    except (SpecError, SweepError, DataError) as e:
        fail(str(e))
    console.print(results_table(outcome, outcome.energy_unit))
    console.print(outcome.overhead_report())
    if outcome.interrupted:
        fail(f"sweep {outcome.name} interrupted; continue it with: sweep run {spec} --resume", 130)
    if outcome.best is None:
        fail(f"sweep {outcome.name}: no trial completed", 1)
    b = outcome.best
    console.print(f"best trial {b.trial_id}: " + ", ".join(f"{k}={v}" for k, v in b.params.items()))
    if outcome.baseline is not None:
        console.print(baseline_line(outcome))
    uri = sweep_spec.tracking.resolved_uri()
    console.print(f"MLflow: experiment {sweep_spec.tracking.experiment or sweep_spec.name}, "
                  f"sweep run {outcome.parent_run_id} "
                  f"({uri}); fold models under the trial run's fold runs (artifact 'model')")
    console.print(f"runs table: {ui_link(uri, outcome.experiment_id)}", soft_wrap=True)
    console.print(f"ensemble of the best trial: sweep ensemble {outcome.name}")


def _with_slurm_budget(spec):
    """Inside a Slurm job with a time limit and no ``search.time_budget``: the job's time left is the budget."""
    from orchestrator.cluster.slurm import slurm_budget

    got = slurm_budget() if spec.search.time_budget is None else None
    if got is None:
        return spec
    budget, line = got
    console.print(line)
    return spec.model_copy(update={"search": spec.search.model_copy(update={"time_budget": budget})})


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="sweep name (default: the newest)")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ] = None,
) -> None:
    """Trials of a sweep with their status and metrics (read from MLflow)."""
    from orchestrator.tracking.views import show_status

    try:
        show_status(name, tracking_uri, console)
    except LookupError as e:
        fail(str(e))


@app.command("list")
def list_(
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ] = None,
) -> None:
    """Sweeps in the MLflow store, newest first."""
    from orchestrator.tracking.views import show_list

    try:
        show_list(tracking_uri, console)
    except LookupError as e:
        fail(str(e))


@app.command()
def ensemble(
    source: Annotated[
        str | None,
        typer.Argument(help="sweep name, MLflow run id, models:/NAME@ALIAS or a directory "
                       "(default: the newest finished sweep)"),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="same as SOURCE, e.g. models:/quickstart-schnet-ensemble@champion")
    ] = None,
    predict: Annotated[
        Path | None, typer.Option(help="molecules to predict: xyz, extxyz, ASE db, traj (positions in Å)")
    ] = None,
    evaluate: Annotated[Path | None, typer.Option(help="labelled molecules: errors and the calibration report")] = None,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="extended XYZ to write (+ a .csv summary); "
                     "default ./<input>.ensemble.extxyz"),
    ] = None,
    unit: Annotated[str | None, typer.Option(help="energy unit of the output (default: the training data's)")] = None,
    input_unit: Annotated[
        str | None,
        typer.Option(help="energy unit of the input's reference energies when the file declares none (default eV)"),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="assemble again even if the sweep has a registered ensemble")
    ] = False,
    save: Annotated[
        Path | None, typer.Option(help="also write the ensemble directory here (for EnsembleCalculator)")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="also write a standalone torch.export ensemble here (loads with torch only)")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an ensemble (--save) or export (--export) "
                                            "directory this tool wrote; anything else is never replaced")] = False,
    uncalibrated: Annotated[
        bool, typer.Option("--uncalibrated", help="report raw member stds (ddof=1), not recalibrated ones")
    ] = False,
) -> None:
    """The best trial's k fold models as one ensemble with calibrated std: assemble, predict, evaluate."""
    from orchestrator.ensemble.ensemble_command import run_command
    from orchestrator.ensemble.io import InputError
    from orchestrator.ensemble.source import EnsembleCommandError
    from schnet_model.data.molecules import DataError
    from schnet_model.ensemble import EnsembleError

    if source and model and source != model:
        fail("give the ensemble either as SOURCE or as --model, not both")
    try:
        run_command(source or model, predict=predict, evaluate=evaluate, out=out, unit=unit, input_unit=input_unit,
                    tracking_uri=tracking_uri, rebuild=rebuild, save=save, uncalibrated=uncalibrated, console=console,
                    export=export, overwrite=overwrite)
    except (EnsembleCommandError, EnsembleError, InputError, DataError) as e:
        fail(str(e))


@app.command()
def select(
    source: Annotated[
        str | None,
        typer.Argument(help="the ensemble: sweep name, run id, models:/… or a directory "
                       "(default: the newest finished sweep)"),
    ] = None,
    candidates: Annotated[
        Path | None, typer.Option(help="choose from the frames of this file (xyz, extxyz, ASE db, traj; Å)")
    ] = None,
    explore: Annotated[
        Path | None,
        typer.Option(help="or: run the ensemble's own Langevin MD from frames of this file "
                     "and choose from its frames"),
    ] = None,
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="molecules to select")] = 20,
    strategy: Annotated[str, typer.Option(help="uncertainty (calibrated force std, weighted k-means diversity), "
                                         "stochastic (drawn with probability ∝ std²) or random")] = "uncertainty",
    temperature: Annotated[list[float] | None, typer.Option(help="K, with --explore; repeat it for a ladder shared out "
                                                       "over the MD runs (default 500)")] = None,
    trajectories: Annotated[int, typer.Option(min=1, help="MD runs, with --explore")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="MD steps per run at most (0.5 fs), with --explore")] = 400,
    threshold: Annotated[
        str,
        typer.Option(help="an MD run stops when a per-atom force std exceeds it: eV/Å (1.0), or a "
                     "multiple of the ensemble's median on the start frames (4x)"),
    ] = "1.0",
    every: Annotated[int, typer.Option(min=1, help="a candidate frame every N MD steps")] = 10,
    max_std: Annotated[
        float | None,
        typer.Option(help="eV/Å: leave out candidates whose max force std exceeds this (upper "
                     "trust level; default: --threshold with --explore, none with --candidates)"),
    ] = None,
    pool_factor: Annotated[
        int | None,
        typer.Option(min=1, help="uncertainty: cluster the pool-factor × n most uncertain "
                     "candidates (smaller: more uncertain choices; larger: more typical ones; "
                     "default 3)"),
    ] = None,
    seed: int = 0,
    out: Annotated[
        Path,
        typer.Option("-o", "--out", help="extended XYZ of the selected molecules (predictions and stds, eV and eV/Å)"),
    ] = Path("selected.extxyz"),
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    ] = None,
) -> None:
    ("""Choose which molecules to label next, by the ensemble's calibrated uncertainty with diversity; """
     """logged in MLflow.""")
    from orchestrator.ensemble.source import EnsembleCommandError
    from orchestrator.learn.select_command import SelectError, run_select
    from schnet_model.data.molecules import DataError
    from schnet_model.ensemble import EnsembleError

    if (candidates is None) == (explore is None):
        fail("give --candidates FILE or --explore FILE (start geometries for the ensemble's MD)")
    try:
        run_select(source, candidates, explore, n=n, strategy=strategy, temperature=temperature or 500.0,
                   trajectories=trajectories, steps=steps, threshold=threshold, every=every, seed=seed, out=out,
                   tracking_uri=tracking_uri, console=console, max_std=max_std, pool_factor=pool_factor)
    except (SelectError, EnsembleCommandError, EnsembleError, DataError) as e:
        fail(str(e))


@app.command()
def learn(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML with a fixed test set (dataset.test_path)")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: dotted.key=value (YAML-typed)")
    ] = None,
    rounds: Annotated[int, typer.Option(min=0, help="rounds of explore → select → label → retrain")] = 3,
    per_round: Annotated[int, typer.Option(min=1, help="molecules labelled per round")] = 20,
    temperature: Annotated[list[float] | None, typer.Option(help="K, the exploration MD; repeat it for a ladder "
                                                       "shared out over the runs, e.g. --temperature 500 --temperature "
                                                       "1000 (default 500)")] = None,
    strategy: Annotated[str, typer.Option(help="uncertainty (calibrated force std, weighted k-means diversity), "
                                         "stochastic (drawn with probability ∝ std²) or random")] = "uncertainty",
    method: Annotated[str, typer.Option(help="reference labels: gfn2-xtb or pyscf:<functional>/<basis>")] = "gfn2-xtb",
    trajectories: Annotated[int, typer.Option(min=1, help="exploration MD runs per round")] = 16,
    steps: Annotated[int, typer.Option(min=1, help="MD steps per run at most (0.5 fs)")] = 400,
    threshold: Annotated[
        str,
        typer.Option(help="an MD run stops when a per-atom force std exceeds it, and the uncertainty "
                     "selection leaves out candidates above it: eV/Å (1.0), or a multiple of the "
                     "ensemble's median on the round's data (4x, the default: it follows the "
                     "round's recalibration)"),
    ] = "4x",
    every: Annotated[int, typer.Option(min=1, help="a candidate frame every N MD steps")] = 10,
    pool_factor: Annotated[
        int | None,
        typer.Option(min=1, help="uncertainty: cluster the pool-factor × per-round most "
                     "uncertain candidates (smaller: more uncertain choices; larger: more "
                     "typical ones; default 3)"),
    ] = None,
    seed: int = 0,
    out: Annotated[
        Path, typer.Option(help="campaign directories (datasets per round, selections, ensembles)")
    ] = Path("campaigns"),
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the newest unfinished campaign of this spec")
    ] = False,
    address: Annotated[str | None, typer.Option(help="Ray cluster address; default: a local cluster")] = None,
) -> None:
    """Active learning: the ensemble explores, selects what to label, the labels join the data, the models retrain."""
    from orchestrator.ensemble.source import EnsembleCommandError
    from orchestrator.learn.campaign import LearnError, LearnOptions, run_campaign
    from orchestrator.search.driver import SweepError
    from orchestrator.spec.load import SpecError
    from orchestrator.spec.sweep import load_sweep_spec
    from schnet_model.data.molecules import DataError

    try:
        sweep_spec = load_sweep_spec(spec, set_ or [])
        opts = LearnOptions(rounds=rounds, per_round=per_round, temperature=temperature or 500.0, strategy=strategy,
                            method=method, trajectories=trajectories, steps=steps, every=every, threshold=threshold,
                            seed=seed, **({} if pool_factor is None else {"pool_factor": pool_factor}))
        camp = run_campaign(sweep_spec, opts, out, resume=resume, address=address, console=console)
    except (SpecError, LearnError, SweepError, DataError, EnsembleCommandError) as e:
        fail(str(e))
    u = "/Å"
    console.print(f"campaign {camp.name} finished: {len(camp.rounds)} trainings; "
                  f"MLflow run {camp.run_id} ({camp.tracking_uri})")
    for r in camp.rounds:
        errs = ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items() if k.endswith("_mae"))
        console.print(f"  round {r.round}: {r.dataset['n_molecules']} molecules, {errs} ({r.dataset['energy_unit']}, "
                      f"{r.dataset['energy_unit']}{u})", soft_wrap=True)


@app.command()
def slurm(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: dotted.key=value (YAML-typed)")
    ] = None,
    nodes: Annotated[int, typer.Option(help="nodes: Ray's head on the first, workers on the others")] = 1,
    cpus_per_node: Annotated[int, typer.Option(help="CPUs per node")] = 8,
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node")] = 0,
    time: Annotated[
        str, typer.Option(help="the job's time limit, [D-]HH:MM:SS; the sweep's budget is what it leaves")
    ] = "04:00:00",
    partition: Annotated[str | None, typer.Option(help="Slurm partition")] = None,
    account: Annotated[str | None, typer.Option(help="Slurm account")] = None,
    requeue: Annotated[
        bool, typer.Option("--requeue", help="let Slurm requeue the job (preemption): it continues the sweep")
    ] = False,
    signal_lead: Annotated[
        int, typer.Option(help="seconds before the time limit the sweep is told to stop and save")
    ] = 300,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the newest unfinished sweep of SPEC (or --name) in a new job")
    ] = False,
    name: Annotated[str | None, typer.Option(help="the sweep's name (default: the spec's name and the time)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the batch script; submit nothing")] = False,
) -> None:
    """Submit a sweep as one Slurm job: Ray on the allocation, sweep run, the ensemble (docs/cluster.md, Slurm)."""
    from datetime import datetime

    from pydantic import ValidationError

    from orchestrator.cluster.slurm import SlurmError, SlurmOptions, ensure_ray_token, render_script, submit
    from orchestrator.search.state import SWEEP_JSON, SweepStateError, check_sweep_name, new_sweep_name
    from orchestrator.search.storage import latest_sweep, storage_root
    from orchestrator.spec.load import SpecError, format_error
    from orchestrator.spec.sweep import load_sweep_spec
    from schnet_model.files import write_text

    try:
        sweep_spec = load_sweep_spec(spec, set_ or [])
        opts = SlurmOptions(nodes=nodes, cpus_per_node=cpus_per_node, gpus_per_node=gpus_per_node, time=time,
                            partition=partition, account=account, requeue=requeue, signal_lead=signal_lead)
    except SpecError as e:
        fail(str(e))
    except ValidationError as e:
        key, _, rest = format_error(e.errors()[0]).partition(":")
        fail(f"--{key.replace('_', '-')}:{rest}")
    root = storage_root(sweep_spec)
    try:
        if name is not None:
            check_sweep_name(name)
    except SweepStateError as e:
        fail(str(e))
    if resume:
        name = name or latest_sweep(root, sweep_spec.name, finished=False)
        if name is None or not (root / name / SWEEP_JSON).is_file():
            fail(f"no unfinished sweep named {sweep_spec.name}-* under {root} to resume")
    elif name is not None and (root / name).exists():
        fail(f"--name {name}: a sweep of that name exists under {root}; continue it with --resume")
    name = name or new_sweep_name(sweep_spec.name)
    script_dir = root / "slurm"
    text = render_script(spec.resolve(), opts, name=name, sets=set_ or [], workdir=Path.cwd(), storage=root,
                         tracking_uri=sweep_spec.tracking.resolved_uri(), log_dir=script_dir)
    if dry_run:
        print(text, end="")
        return
    script = script_dir / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.sbatch"
    script_dir.mkdir(parents=True, exist_ok=True)
    write_text(script, text)
    ensure_ray_token()
    try:
        job = submit(script)
    except SlurmError as e:
        fail(str(e), 1)
    log = script_dir / f"sweep-{name}-{job}.out"
    console.print(f"submitted job {job}: sweep {name} ({opts.nodes} node(s) × {opts.cpus_per_node} CPUs, "
                  f"{opts.gpus_per_node} GPUs each; time limit {opts.time}); batch script {script}", soft_wrap=True)
    console.print(f"watch it: squeue -j {job}; tail -f {log}; sweep status {name}", soft_wrap=True)
    console.print(f"stop it (it saves its state): scancel {job}; continue it: sweep slurm {spec} --resume "
                  f"--name {name}", soft_wrap=True)


@app.command("mlflow-server")
def mlflow_server(
    data: Annotated[
        Path, typer.Option(help="directory for PostgreSQL's data, the password file and the artifacts")
    ] = Path("mlflow-server"),
    host: Annotated[str, typer.Option(help="interface to bind (keep 127.0.0.1 and port-forward)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="MLflow server port")] = 5000,
    pg_port: Annotated[
        int, typer.Option(help="PostgreSQL port (127.0.0.1 only; Debian's own cluster has 5432)")
    ] = 15432,
    workers: Annotated[int, typer.Option(help="server worker processes")] = 2,
) -> None:
    """MLflow tracking server on a PostgreSQL backend store with a served artifact store, until Ctrl-C."""
    import signal

    from orchestrator.cluster.mlflow_server import MlflowServer, MlflowServerError

    def _terminate(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    server = MlflowServer(data, host, port, pg_port, workers)
    try:
        uri = server.start()
        console.print(f"MLflow server {uri} (backend PostgreSQL 127.0.0.1:{pg_port}, "
                      f"artifacts {server.root / 'artifacts'}); "
                      f"use tracking.uri: {uri}", soft_wrap=True, highlight=False)
        code = server.proc.wait()
    except MlflowServerError as e:
        server.stop()
        fail(str(e))
    except KeyboardInterrupt:
        server.stop()
        return
    server.stop()
    fail(f"mlflow server exited {code} (log: {server.root / 'mlflow-server.log'})", 1)


@app.command("md-inputs")
def md_inputs(
    molecule: Annotated[
        Path, typer.Argument(help="structure file (xyz, extxyz, pdb, …; its first frame), positions in Å")
    ],
    ensemble: Annotated[Path, typer.Option("--ensemble", help="ensemble directory (sweep ensemble --save DIR)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="directory to write")] = Path("md"),
    temperature: Annotated[float, typer.Option(help="K: initial velocities (and i-PI's thermostat)")] = 300.0,
    timestep: Annotated[float, typer.Option(help="fs")] = 0.5,
    steps: Annotated[int, typer.Option(min=1, help="i-PI's total_steps")] = 1000,
    thermostat: Annotated[bool, typer.Option(help="i-PI: NVT (Langevin) instead of NVE")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a directory this command wrote")] = False,
) -> None:
    """Write the inputs docs/md.md's commands read: mol.xyz, mol.pdb (unique atom names), i-PI's init.xyz and
    input.xml, LAMMPS's in.setup and lammps_types.json."""
    from schnet_model.engines.inputs import MARKER, write_md_inputs
    from schnet_model.ensemble import EnsembleError
    from schnet_model.files import DestinationError, check_destination

    try:
        check_destination(out, "directory of MD inputs", MARKER, overwrite)
        files = write_md_inputs(molecule, ensemble, out, temperature, timestep, steps, thermostat)
    except (EnsembleError, DestinationError) as e:
        fail(str(e))
    console.print(f"wrote {', '.join(f.name for f in files)} to {out}/ (commands: docs/md.md)", soft_wrap=True,
                  highlight=False)


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Option("-o", "--out", help="npz file to write (MD17 layout)")],
    molecule: Annotated[
        str, typer.Option(help="ethanol, methanol, …, an ASE g2 name, or a geometry file (xyz, …) to start from")
    ] = "ethanol",
    frames: Annotated[int, typer.Option(min=1)] = 1000,
    temperature: Annotated[float, typer.Option(help="K")] = 500.0,
    seed: int = 0,
    stride: Annotated[int, typer.Option(min=1, help="MD steps between frames")] = 10,
    method: Annotated[
        str, typer.Option(help="gfn2-xtb, or pyscf:<functional>/<basis> to label frames with DFT")
    ] = "gfn2-xtb",
    relabel_file: Annotated[Path | None, typer.Option("--relabel", help="label the geometries of this MD17 npz (or any "
                                                      "ASE-readable file) with --method instead of running MD")] = None,
) -> None:
    """Langevin MD (GFN2-xTB) labelled by a real quantum-chemistry method, written as an MD17 npz."""
    from rich.progress import Progress

    from schnet_model.data.generate import (
        generate_md,
        geometries,
        parse_method,
        relabel,
        start_geometry,
        theory,
        write_npz,
    )

    try:
        kind, _, _ = parse_method(method)
    except ValueError as e:
        fail(f"--method: {e}")
    from schnet_model.files import DestinationError, check_file_destination

    try:  # before the labelling: a destination that cannot be written would lose it
        check_file_destination(out)
    except DestinationError as e:
        fail(f"-o: {e}")
    if relabel_file is None:
        try:
            start_geometry(molecule)
        except ValueError as e:
            fail(f"--molecule: {e}")
    with Progress(console=console, transient=True) as p:
        if relabel_file is not None:
            try:
                arrays = geometries(relabel_file)
            except ValueError as e:
                fail(str(e))
        else:
            task = p.add_task(f"{molecule} GFN2-xTB MD at {temperature:g} K", total=frames)
            arrays = generate_md(molecule, frames, temperature, seed, stride,
                                 progress=lambda d, t: p.update(task, completed=d))
        if relabel_file is not None or kind == "pyscf":
            task = p.add_task(f"{theory(method)} labels", total=len(arrays["R"]))
            try:
                arrays = relabel(arrays, method, progress=lambda d, t: p.update(task, completed=d))
            except RuntimeError as e:  # an SCF that did not converge
                fail(f"{relabel_file or 'MD frames'}: {e}", 1)
    write_npz(arrays, out)
    theory = str(arrays["theory"])
    console.print(f"wrote {len(arrays['R'])} frames ({theory}, kcal/mol, Å) to {out}")


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="dataset file or directory")],
    fmt: Annotated[str, typer.Option("--format", help="auto or a format name")] = "auto",
    energy_unit: Annotated[str | None, typer.Option(help="declare the energy unit (overrides the file)")] = None,
) -> None:
    """Counts, atoms per molecule, elements, units, energy and force statistics, detected format."""
    from pydantic import ValidationError

    from orchestrator.data_info import show_info
    from schnet_model.data.molecules import DataError

    try:
        show_info(path, fmt, energy_unit, console)
    except DataError as e:
        fail(str(e))
    except ValidationError as e:
        fail(f"{path}: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")


@data_app.command("download")
def data_download(
    dataset: Annotated[str, typer.Argument(help="md17, rmd17, iso17 or qm9")],
    molecule: Annotated[str | None, typer.Option(help="MD17/rMD17 molecule, e.g. aspirin")] = None,
    dest: Annotated[
        Path | None, typer.Option(help="cache directory (default $SWEEP_DATA, else ~/.cache/sweep/data)")
    ] = None,
) -> None:
    """Fetch a dataset from its official source into the cache, verify it, print its path."""
    from schnet_model.data.download import fetch
    from schnet_model.data.molecules import DataError

    try:
        path = fetch(dataset.lower(), molecule, dest, full_check=True)
    except DataError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; nothing partial was left in the cache", 130)
    console.print(f"{dataset.lower()}{f' {molecule}' if molecule else ''}: {path}", soft_wrap=True, highlight=False)


def main() -> None:
    """The ``sweep`` script: the app, with Typer's own usage errors (a bad option value, an unknown option, a missing
    argument) as one line like every other error, instead of a boxed panel under the usage text."""
    try:
        code = app(standalone_mode=False, prog_name="sweep")  # typer.Exit (our fail(), --help) comes back as its code
    except typer.Abort:  # Ctrl-C at a prompt
        code = 130
    except typer.TyperException as e:  # UsageError, BadParameter, NoSuchOption, MissingParameter
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":  # `sweep` or `sweep data` alone: the help, as before
            console.print(e.format_message(), highlight=False)
            code = 0
        else:
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {e.format_message()}{hint}", soft_wrap=True, highlight=False)
            code = getattr(e, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
