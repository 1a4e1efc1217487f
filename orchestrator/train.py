"""``sweep train``: one model (SchNet or PaiNN) with the spec's fixed hyperparameters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.spec.load import TrainSpec
from schnet_model import Trainer, evaluate, save_model
from schnet_model.data.heldout import n_held_out, with_tests
from schnet_model.data.splits import SplitManifest, random_split
from schnet_model.model_dir import ModelInfo
from schnet_model.nn.family import build_model, describe
from schnet_model.training.metrics import Metrics


@dataclass
class TrainOutcome:
    """What ``sweep train`` produced."""

    out: Path
    val: Metrics
    tests: dict[str, Metrics]  # every named test set's metrics (``test``: held out of the dataset)
    stop_reason: str
    epochs: int




def run_train(spec: TrainSpec, out: Path, console: Console | None = None, overwrite: bool = False) -> TrainOutcome:
    """Read the data, split, train with per-epoch progress, evaluate, write the model directory."""
    console = console or Console()
    ds = spec.dataset
    joined = with_tests(ds)
    loaded, data = joined.dataset, joined.molecules
    data.check_max_z(spec.model.max_z)
    console.print(loaded.molecules.describe())
    split = random_split(len(loaded.molecules), ds.n_train, ds.n_val, n_held_out(ds, loaded), ds.split_seed,
                         loaded.test, loaded.train_pool)
    train, val = data.subset(split.train), data.subset(split.val)
    manifest = SplitManifest.of(joined, ds.split_seed, split.test, train=split.train, val=split.val)
    tests = {name: data.subset(idx) for name, idx in manifest.test_sets().items()}
    console.print(f"split (seed {ds.split_seed}): {len(split.train)} train, {len(split.val)} validation; "
                  f"{manifest.describe_tests()}")
    torch.manual_seed(spec.training.seed)
    model = build_model(spec.model)
    trainer = Trainer(model, train, val, spec.training)
    eu, fu = data.energy_unit, data.force_unit
    console.print(
        f"{describe(model)}; training on {'energies + forces' if trainer.use_forces else 'energies'}, "
        f"device {trainer.device}"
    )
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(), console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=spec.training.max_epochs)

        def on_epoch(r) -> None:
            v = r.val
            forces = f"  val F MAE {v.forces_mae:.4g} {fu}" if v.forces_mae is not None else ""
            progress.console.print(
                f"epoch {r.epoch:4d}  train loss {r.train_loss:.4g}  val loss {v.loss:.4g}  "
                f"val E MAE {v.energy_mae:.4g} {eu}{forces}  lr {r.lr:.3g}  "
                f"{r.seconds:.1f}s{'  *' if r.improved else ''}"
            )
            progress.update(task, completed=r.epoch)

        result = trainer.fit(on_epoch)
    console.print(f"stopped: {result.stop_reason}; best epoch {result.best_epoch} ({time.perf_counter() - t0:.1f} s)")
    if result.offset_refit is not None:
        console.print(result.offset_refit.format())
    val_m = evaluate(trainer.model, val, spec.training.rho, trainer.use_forces)
    test_m = {name: evaluate(trainer.model, t, spec.training.rho, trainer.use_forces) for name, t in tests.items()}
    console.print(f"[bold]validation[/] ({len(val)} molecules): {val_m.format()}")
    for name, m in test_m.items():
        console.print(f"[bold]{name}[/] ({len(tests[name])} molecules): {m.format()}")
    info = ModelInfo(
        energy_unit=data.energy_unit,
        elements=data.elements,
        extra={
            "dataset": {"path": str(loaded.path), "name": data.name, **data.meta},
            "training": spec.training.model_dump(),
            "metrics": {"val": val_m.as_dict(), **{name: m.as_dict() for name, m in test_m.items()}},
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
        },
    )
    path = save_model(trainer.model, info, out,
                      extra_files={"split.json": manifest.to_json(), "spec.json": spec.model_dump_json(indent=2)},
                      overwrite=overwrite)
    console.print(f"model written to {path}")
    return TrainOutcome(path, val_m, test_m, result.stop_reason, result.history[-1].epoch if result.history else 0)
