"""Calibration reports of an ensemble: metrics before/after recalibration, a Rich table, a reliability plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from schnet_model.calibration import Calibration, calibration_metrics, fit_scale, reliability, spearman


@dataclass
class PropertyErrors:
    """Errors of the ensemble mean and raw (uncalibrated, ddof=1) stds of one property, flattened; for forces given
    with their molecules' ``atom_ptr`` also per atom (vector norms) and per molecule (the largest atom's: what an MD
    stop and an active-learning selection act on)."""

    name: str  # "energy" or "forces"
    unit: str
    error: list[np.ndarray] = field(default_factory=list)  # chunks of [n] prediction − reference
    std: list[np.ndarray] = field(default_factory=list)  # chunks of [n] raw stds
    atom: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # chunks of ([n_atoms] ‖σ‖, ‖error‖)
    molecule: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # chunks of ([n_mols] max ‖σ‖, ‖e‖)

    def add(self, error: np.ndarray, std: np.ndarray, atom_ptr: np.ndarray | None = None) -> None:
        ok = np.isfinite(error)
        self.error.append(np.ravel(error[ok]))
        self.std.append(np.ravel(std[ok]))
        if atom_ptr is None or error.ndim != 2:
            return
        e_atom = np.linalg.norm(error, axis=1)  # [n_atoms]
        s_atom = np.sqrt(np.sum(std**2, axis=1))  # [n_atoms] ‖σ‖ over x, y, z
        good = np.isfinite(e_atom)
        self.atom.append((s_atom[good], e_atom[good]))
        starts = np.asarray(atom_ptr)[:-1][np.diff(atom_ptr) > 0]  # [n_mols] first atom of each non-empty molecule
        if len(starts):
            e_mol = np.maximum.reduceat(np.where(good, e_atom, -np.inf), starts)
            s_mol = np.maximum.reduceat(np.where(good, s_atom, -np.inf), starts)
            keep = np.isfinite(e_mol)
            self.molecule.append((s_mol[keep], e_mol[keep]))

    def ranked(self) -> dict[str, float]:
        """Spearman ρ(σ, |error|) per atom and per molecule (scale-free: the same raw and calibrated)."""
        out = {}
        for key, chunks in (("spearman_atom", self.atom), ("spearman_molecule", self.molecule)):
            if chunks and sum(len(s) for s, _ in chunks) > 1:
                out[key] = spearman(np.concatenate([s for s, _ in chunks]), np.concatenate([e for _, e in chunks]))
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate(self.error) if self.error else np.zeros(0),
                np.concatenate(self.std) if self.std else np.zeros(0))


@dataclass
class CalibrationReport:
    """Metrics (raw and calibrated) and reliability curves per property."""

    metrics: dict[str, dict[str, dict[str, float]]]  # prop → {"raw": {...}, "calibrated": {...}}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # prop → {"raw": (expected, observed), ...}
    units: dict[str, str]
    best_scale: dict[str, float]  # the pointwise ML scale on these data (a diagnostic, not applied)

    def flat(self, prefix: str = "ensemble_test_") -> dict[str, float]:
        """``{prefix}{prop}_{metric}_{raw|calibrated}`` → value (finite values only), for MLflow."""
        out = {}
        for prop, by in self.metrics.items():
            for kind, m in by.items():
                for key, v in m.items():
                    if np.isfinite(v):
                        out[f"{prefix}{prop}_{key}_{kind}"] = float(v)
        return out


def build_report(props: list[PropertyErrors], calibration: Calibration) -> CalibrationReport:
    """Metrics of the raw and the recalibrated stds for every property with data."""
    metrics, curves, units, best = {}, {}, {}, {}
    for p in props:
        e, s = p.arrays()
        if not len(e):
            continue
        sc = calibration.scale(p.name)
        ranked = p.ranked()
        metrics[p.name] = {"raw": calibration_metrics(e, s) | ranked,
                           "calibrated": calibration_metrics(e, s * sc) | ranked}
        curves[p.name] = {"raw": reliability(e, s), "calibrated": reliability(e, s * sc)}
        units[p.name] = p.unit
        best[p.name] = fit_scale(e, s)
    return CalibrationReport(metrics, curves, units, best)


ROWS = (("rmse", "RMSE (ensemble mean)", True), ("rmv", "RMS of σ", True), ("spearman", "Spearman ρ(σ, |err|)", False),
        ("spearman_atom", "Spearman per atom (‖σ‖, ‖err‖)", False),
        ("spearman_molecule", "Spearman per molecule (max atom)", False),
        ("miscal_area", "miscal. area", False), ("nll", "NLL (nats)", False),
        ("coverage68", "coverage ±1σ (68%)", False), ("coverage95", "coverage ±2σ (95%)", False))


def report_table(report: CalibrationReport, calibration: Calibration, title: str) -> Table:
    """Rich table: one block per property, raw vs recalibrated."""
    t = Table(title=title)
    for c in ("property", "metric", "raw (ddof=1)", "recalibrated"):
        t.add_column(c, justify="left" if c in ("property", "metric") else "right")
    for prop, by in report.metrics.items():
        unit = report.units[prop]
        n = int(by["raw"]["n"])
        what = "molecules" if prop == "energy" else "components"
        t.add_row(f"{prop}, {n:,} {what}", "scale applied", "1", f"{calibration.scale(prop):.4g}")
        t.add_row("", "ML scale here", "", f"{report.best_scale[prop]:.4g}")
        for key, label, with_unit in ROWS:
            if key not in by["raw"]:  # per atom and per molecule: forces only
                continue
            raw, cal = by["raw"][key], by["calibrated"][key]
            u = f" {unit}" if with_unit else ""
            t.add_row("", label, f"{raw:.4g}{u}", f"{cal:.4g}{u}" if key != "rmse" else "")
        t.add_section()
    return t


def reliability_plot(report: CalibrationReport, out: Path, title: str = "") -> Path:
    """Observed vs expected coverage of central Gaussian intervals, raw and recalibrated, per property."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    props = list(report.curves)
    fig, axes = plt.subplots(1, max(len(props), 1), figsize=(4.2 * max(len(props), 1), 4), squeeze=False)
    for ax, prop in zip(axes[0], props, strict=False):
        for kind, style in (("raw", "--"), ("calibrated", "-")):
            p, obs = report.curves[prop][kind]
            m = report.metrics[prop][kind]
            ax.plot(p, obs, style, label=f"{kind}: area {m['miscal_area']:.3f}, NLL {m['nll']:.3g}")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("expected coverage of ±z·σ")
        ax.set_ylabel("observed coverage")
        ax.set_title(f"{prop} ({report.units[prop]})")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


__all__ = ["CalibrationReport", "PropertyErrors", "build_report", "reliability_plot", "report_table"]
