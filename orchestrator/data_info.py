"""``sweep data info``: what a dataset file holds, with its units and where they came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from rich.console import Console
from rich.table import Table

from schnet_model.config import DatasetConfig
from schnet_model.data.load import load_dataset
from schnet_model.nn.offsets import fit_offsets
from schnet_model.units import energy_factor

# Force RMS of molecular-dynamics data sets at 300–1000 K lies within roughly 0.1–10 eV/Å;
# far outside, the declared energy or length unit is most likely wrong.
PLAUSIBLE_FORCE_RMS_EV_PER_A = (0.05, 20.0)


def unit_warnings(energy_unit: str, force_rms: float | None, meta: dict[str, str]) -> list[str]:
    """Lines that make a unit mismatch visible."""
    out = []
    if "energy_unit_in_file" in meta and meta["energy_unit_in_file"] != energy_unit:
        out.append(f"the file declares {meta['energy_unit_in_file']} but the spec/option overrides it to {energy_unit}")
    if force_rms is not None and force_rms > 0:
        rms_ev = force_rms * energy_factor(energy_unit, "eV")
        lo, hi = PLAUSIBLE_FORCE_RMS_EV_PER_A
        if not lo <= rms_ev <= hi:
            out.append(
                f"force RMS is {rms_ev:.3g} eV/Å if the energy unit really is {energy_unit}; typical MD data lie in "
                f"{lo}–{hi} eV/Å: check dataset.energy_unit / length_unit"
            )
    return out


def show_info(path: Path, fmt: str = "auto", energy_unit: str | None = None,
              console: Console | None = None) -> list[str]:
    """Print the summary table; returns the unit warnings printed."""
    console = console or Console()
    ds = load_dataset(DatasetConfig(path=path, format=fmt, energy_unit=energy_unit, qm9_exclude_uncharacterized=False))
    m = ds.molecules
    n = m.n_atoms
    t = Table(title=str(path), show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("format", m.meta.get("format", "?"))
    t.add_row("molecules",
              f"{len(m):,}" + (f" ({len(ds.test):,} in the official test set)" if ds.test is not None else ""))
    t.add_row("atoms per molecule", f"{n.min()}–{n.max()} (mean {n.mean():.1f})")
    zs, counts = np.unique(m.Z, return_counts=True)
    t.add_row("elements", ", ".join(f"{chemical_symbols[z]} ({c:,} atoms)" for z, c in zip(zs, counts, strict=True)))
    t.add_row("energy unit", f"{m.energy_unit} — {m.meta.get('energy_unit_source', 'format default')}")
    t.add_row("length unit", f"Å (file: {m.meta.get('length_unit_in_file', 'Å')})")
    force_rms = None
    if m.E is not None:
        e = m.E
        t.add_row("energy", f"{e.min():.8g} … {e.max():.8g} {m.energy_unit} (mean {e.mean():.8g}, std {e.std():.4g})")
        per_atom = e / n
        t.add_row("energy per atom", f"mean {per_atom.mean():.6g}, std {per_atom.std():.4g} {m.energy_unit}")
        ref, _ = fit_offsets(m.Z, m.atom_ptr, e, None, max(100, int(m.Z.max()) + 1))
        resid = e - np.add.reduceat(ref[m.Z], m.atom_ptr[:-1])
        t.add_row("after per-element references", f"std {resid.std():.4g} {m.energy_unit}")
    if m.F is not None:
        force_rms = float(np.sqrt(np.mean(m.F**2)))
        t.add_row("forces", f"present, RMS {force_rms:.4g} {m.force_unit}, max |F| {np.abs(m.F).max():.4g}")
    else:
        t.add_row("forces", "absent (energy-only training)")
    for k in ("theory", "name", "atomref", "converted_from"):
        if k in m.meta:
            t.add_row(k, m.meta[k])
    console.print(t)
    warnings = unit_warnings(m.energy_unit, force_rms, m.meta)
    for w in warnings:
        console.print(f"[bold yellow]unit warning:[/] {w}", soft_wrap=True)
    return warnings
