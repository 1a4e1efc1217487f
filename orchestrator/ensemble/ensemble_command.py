"""The ``sweep ensemble`` command: the ensemble a source names, then prediction or evaluation files, an export."""


from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from orchestrator.ensemble.assemble import resolve
from orchestrator.ensemble.io import Writer, convert_refs, csv_path, read_chunks
from orchestrator.ensemble.report import PropertyErrors, build_report, report_table
from orchestrator.ensemble.source import EnsembleCommandError
from orchestrator.spec.sweep import TrackingConfig
from orchestrator.tracking.store import (
    no_artifact_progress_bar,
)
from schnet_model.data.molecules import Molecules
from schnet_model.ensemble import MANIFEST, STD_DDOF, Ensemble
from schnet_model.export import PROGRAM
from schnet_model.files import AtomicFiles, DestinationError, check_destination, check_file_destination
from schnet_model.training.metrics import mae_rmse
from schnet_model.units import ENERGY_UNITS, UnitError, canonical_energy_unit, energy_factor


def predict_file(ens: Ensemble, path: Path, out: Path | None, *, unit: str | None = None,
                 input_unit: str | None = None, calibrated: bool = True, evaluate: bool = False,
                 console: Console | None = None, max_atoms: int | None = None) -> dict[str, Any]:
    """Predict every frame of ``path``; write ``out`` (+ CSV) atomically when given; errors (and the report) with
    references.

    Returns a summary: counts, units, error statistics (and the report when ``evaluate``).
    """
    from orchestrator.ensemble.io import DEFAULT_CHUNK_ATOMS

    console = console or Console()
    try:
        unit = canonical_energy_unit(unit) if unit else ens.energy_unit
    except UnitError as e:
        raise EnsembleCommandError(f"--unit: {e}") from e
    if out is not None and Path(out).resolve() == Path(path).resolve():
        raise EnsembleCommandError(f"{out}: the output would overwrite the input")
    ref_unit, chunks = read_chunks(path, max_atoms or DEFAULT_CHUNK_ATOMS, input_unit)
    props = [PropertyErrors("energy", unit), PropertyErrors("forces", f"{unit}/Å")]
    n_mols = n_atoms = 0
    n_ref_e = 0
    sums = np.zeros(2)  # Σ reference energy, Σ predicted energy over frames with a reference (the unit check)
    seen = ens.calibration.details.get("seen_std_max", {}) if calibrated else {}  # in the ensemble's unit
    beyond: list[int] = []  # frames whose calibrated std exceeds any seen on held-out molecules
    t0 = time.time()
    files = AtomicFiles(*(() if out is None else (Path(out), csv_path(Path(out)))))
    with files as handles:
        writer = None
        for chunk in chunks:
            bad = ~np.isin(chunk.Z, ens.elements)  # [n_atoms]
            if bad.any():
                frame = chunk.first + int(np.searchsorted(chunk.atom_ptr, int(np.argmax(bad)), side="right")) - 1
                ens.check_elements(chunk.Z, f"{path}: frame {frame}")
            mols = Molecules(Z=chunk.Z, R=chunk.R, atom_ptr=chunk.atom_ptr, E=None, F=None, energy_unit=ens.energy_unit,
                             name=Path(path).name)
            raw = ens.predict(mols, calibrated=False).to_unit(unit)
            pred = raw.scaled(ens.calibration) if calibrated else raw
            if seen:
                beyond += [chunk.first + i for i in np.flatnonzero(
                    extrapolated(pred, mols, seen, energy_factor(ens.energy_unit, unit)))]
            ref_e, ref_f = convert_refs(chunk, ref_unit, unit)
            has_ref = bool(np.isfinite(ref_e).any() or np.isfinite(ref_f).any())
            if has_ref:
                n_ref_e += int(np.isfinite(ref_e).sum())
                ok = np.isfinite(ref_e)
                sums += (ref_e[ok].sum(), raw.energy[ok].sum())
                props[0].add(raw.energy - ref_e, raw.energy_std)
                props[1].add(raw.forces - ref_f, raw.forces_std, chunk.atom_ptr)
            if handles:
                if writer is None:
                    writer = Writer(handles[0], handles[1], unit, calibrated and ens.calibration.method != "identity",
                                    has_ref)
                writer.write(chunk, pred, ref_e if has_ref else None, ref_f if has_ref else None)
            n_mols += len(chunk)
            n_atoms += len(chunk.Z)
        if handles:
            files.commit()
    summary: dict[str, Any] = {"molecules": n_mols, "atoms": n_atoms, "unit": unit, "reference_unit": ref_unit,
                               "seconds": time.time() - t0, "with_reference": n_ref_e}
    e, _ = props[0].arrays()
    f, _ = props[1].arrays()
    if len(e):
        summary["energy_mae"], summary["energy_rmse"] = mae_rmse(e)
    if len(f):
        summary["forces_mae"], summary["forces_rmse"] = mae_rmse(f)
    if beyond:
        summary["extrapolated_frames"] = beyond
        console.print(f"warning: {path}: {len(beyond)} of {n_mols} molecules (frames {', '.join(map(str, beyond[:5]))}"
                      f"{', …' if len(beyond) > 5 else ''}) have a calibrated std beyond any seen "
                      "on the held-out molecules "
                      f"(energy {seen['energy_per_atom']:.3g} {ens.energy_unit}/atom"
                      + (f", force {seen['forces']:.3g} {ens.energy_unit}/Å" if "forces" in seen else "")
                      + "): their predictions are extrapolation")
    if n_ref_e and (note := unit_note(sums[0], sums[1], ref_unit, unit)):
        summary["unit_note"] = note
        console.print(f"warning: {path}: {note}")
    if evaluate:
        if not len(e) and not len(f):
            raise EnsembleCommandError(f"{path}: no reference energies or forces to evaluate against")
        summary["report"] = build_report([p for p in props if p.arrays()[0].size], ens.calibration)
    return summary


def extrapolated(pred, mols: Molecules, seen: dict[str, float], factor: float) -> np.ndarray:
    """[n] whether each molecule's calibrated std (energy per atom, or its largest force component's) exceeds the
    largest seen on held-out molecules (``seen``, in the ensemble's unit; predictions × ``factor`` to be in it)."""
    out = pred.energy_std / factor / mols.n_atoms > seen["energy_per_atom"]
    if "forces" in seen and pred.forces_std is not None:
        fmax = np.maximum.reduceat(pred.forces_std.max(axis=1), mols.atom_ptr[:-1]) / factor  # [n]
        out |= fmax > seen["forces"]
    return out


def unit_note(ref_sum: float, pred_sum: float, ref_unit: str, unit: str) -> str:
    """A line when the references' energies look like another unit than they were read as: their total over the
    predicted total is near the factor between ``ref_unit`` and another unit (e.g. kcal/mol read as eV: ×23)."""
    if not pred_sum or not np.isfinite(ref_sum / pred_sum) or 0.8 < ref_sum / pred_sum < 1.25:
        return ""
    ratio = ref_sum / pred_sum  # the references, in ``unit`` as converted from ref_unit, over the predictions
    for other in ENERGY_UNITS:
        factor = energy_factor(ref_unit, other)  # a value in ref_unit × factor = the same energy in other
        if other != ref_unit and 0.9 < ratio / factor < 1.1:
            return (f"the reference energies are {ratio:.3g}× what the ensemble predicts; they look like {other}, not "
                    f"{ref_unit} as read (declare it: --input-unit {other}, or energy_unit={other} in the file)")
    return (f"the reference energies are {ratio:.3g}× what the ensemble predicts (read as {ref_unit}): a wrong unit, "
            "or molecules far from the training data")


def default_output(path: Path) -> Path:
    """``mols.xyz`` → ``./mols.ensemble.extxyz``."""
    return Path.cwd() / f"{Path(path).stem}.ensemble.extxyz"


def run_command(source: str | None, *, predict: Path | None, evaluate: Path | None, out: Path | None,
                unit: str | None, input_unit: str | None, tracking_uri: str | None, rebuild: bool, save: Path | None,
                uncalibrated: bool, console: Console, export: Path | None = None, overwrite: bool = False) -> None:
    """The ``sweep ensemble`` command (errors as :class:`EnsembleCommandError`, :class:`EnsembleError`,
    :class:`InputError`)."""
    with no_artifact_progress_bar():
        _run_command(source, predict=predict, evaluate=evaluate, out=out, unit=unit, input_unit=input_unit,
                     tracking_uri=tracking_uri, rebuild=rebuild, save=save, uncalibrated=uncalibrated, console=console,
                     export=export, overwrite=overwrite)


def _run_command(source: str | None, *, predict: Path | None, evaluate: Path | None, out: Path | None,
                 unit: str | None, input_unit: str | None, tracking_uri: str | None, rebuild: bool, save: Path | None,
                 uncalibrated: bool, console: Console, export: Path | None, overwrite: bool = False) -> None:
    if predict is not None and evaluate is not None:
        raise EnsembleCommandError("give --predict or --evaluate, not both")
    target = predict or evaluate
    if target is not None and not Path(target).is_file():
        raise EnsembleCommandError(f"{target}: no such file")
    for opt, val in (("--unit", unit), ("--input-unit", input_unit)):
        if val:
            try:
                canonical_energy_unit(val)
            except UnitError as e:
                raise EnsembleCommandError(f"{opt}: {e}") from e
    try:  # every destination checked before any work: nothing is replaced that this tool did not write
        if save is not None:
            check_destination(save, "ensemble directory", MANIFEST, overwrite)
        if export is not None:
            check_destination(export, "export directory", PROGRAM, overwrite)
        if out is not None:
            check_file_destination(out)
    except DestinationError as e:
        raise EnsembleCommandError(str(e)) from None
    uri = TrackingConfig(uri=tracking_uri).resolved_uri()
    loaded = resolve(source, uri, rebuild, console)
    ens = loaded.ensemble
    console.print(f"ensemble: {loaded.description}; {ens.k} members, elements {ens.elements}, "
                  f"energies in {ens.energy_unit}, "
                  f"std ddof={STD_DDOF}, recalibration {ens.calibration.method} "
                  f"(energy ×{ens.calibration.energy_scale:.3g}, forces ×{ens.calibration.forces_scale:.3g})")
    if save is not None:
        ens.save(save, overwrite=overwrite)
        console.print(f"ensemble directory written to {save} "
                      "(load with Ensemble.load / EnsembleCalculator)")
    if export is not None:
        from schnet_model.export import export_ensemble

        t0 = time.time()
        export_ensemble(ens, export, overwrite=overwrite)
        console.print(f"standalone ensemble exported to {export} in {time.time() - t0:.0f} s (torch.export program + "
                      f"manifest with sha256; python -c 'import sys; sys.path.insert(0, \"{export}\"); "
                      f"from load_ensemble import load; print(load(\"{export}\").manifest[\"outputs\"])')",
                      soft_wrap=True)
    if target is None:
        src = f" {source}" if source else ""
        console.print(f"next: sweep ensemble{src} --predict mols.xyz -o preds.extxyz  (energies, forces and their std "
                      f"for your molecules); sweep ensemble{src} --save ens/ "
                      "&& python examples/md_uncertainty.py ens/  "
                      f"(MD that stops where the ensemble is unsure); mlflow ui --backend-store-uri {uri}  "
                      "(the sweep → trial → fold runs)")
        return
    if predict is not None:
        out = out or default_output(predict)
    res = predict_file(ens, Path(target), out, unit=unit, input_unit=input_unit, calibrated=not uncalibrated,
                       evaluate=evaluate is not None, console=console)
    u = res["unit"]
    msg = f"{res['molecules']:,} molecules ({res['atoms']:,} atoms) in {res['seconds']:.1f} s"
    if out is not None:
        msg += f" → {out} and {csv_path(Path(out))} (energies in {u}, forces in {u}/Å)"
    console.print(msg)
    if "energy_mae" in res or "forces_mae" in res:
        parts = []
        if "energy_mae" in res:
            parts.append(f"energy MAE {res['energy_mae']:.4g} {u} (RMSE {res['energy_rmse']:.4g})")
        if "forces_mae" in res:
            parts.append(f"forces MAE {res['forces_mae']:.4g} {u}/Å (RMSE {res['forces_rmse']:.4g})")
        console.print(f"errors against the file's references (read as {res['reference_unit']}): " + ", ".join(parts))
    if "report" in res:
        console.print(report_table(res["report"], ens.calibration, f"{Path(target).name}: calibration report"))


__all__ = ["default_output", "predict_file", "run_command"]
