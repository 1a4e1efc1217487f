"""A vectorised ensemble of k members of one model family (SchNet, PaiNN): one pass evaluates all members.

The members' weights are stacked along a leading member axis ``k`` and evaluated by their family's member-axis
forward (:func:`schnet_model.nn.family.energies_forces`; for SchNet, :func:`schnet_model.nn.core.energies_forces`)
on a shared input. For SchNet: what is shared between
members is computed once per batch — unordered pairs, distances, their sort and Gaussian windows —
and on CPU each member's filters are one bank over that shared plan (the first layer of its
interactions one product per chunk of pairs, over the chunk's window of Gaussians), the atom-wise
layers batched products over members, and the forces of every member one explicit backward pass.

Std convention: ``std`` is the **sample standard deviation over the k members with
ddof = STD_DDOF = 1** (``torch.std(correction=1)``, ``np.std(ddof=1)``), for energies per
molecule and for each force component; ``forces_std_norm`` of an atom is
``sqrt(σ_x² + σ_y² + σ_z²)`` of its component stds (the root of the trace of the members'
force covariance), summarised per molecule by its max and mean over atoms. A stored
:class:`~schnet_model.calibration.Calibration` multiplies these stds (``calibrated=True``).

Memory: molecules are evaluated in batches whose estimated footprint stays under
``memory_budget`` bytes (a molecule larger than the budget is evaluated alone), positions are
never padded, and pair lists are built per batch, vectorised over molecules of equal size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schnet_model.calibration import Calibration
from schnet_model.data.molecules import Molecules
from schnet_model.data.neighbors import block_pairs, cutoff_pairs_many
from schnet_model.files import atomic_dir, check_destination
from schnet_model.model_dir import ModelInfo, ModelLoadError, load_model, save_model
from schnet_model.nn.core import Graph, LayoutError
from schnet_model.nn.family import (
    OFFSET_KEYS,
    AnyConfig,
    AnyModel,
    build_model,
    energies_forces,
    memory_per_item,
    stack_states,
)
from schnet_model.nn.schnet import filter_path
from schnet_model.units import canonical_energy_unit, energy_factor, force_unit

STD_DDOF = 1  # the one std convention: sample std over members (Bessel-corrected)
FORMAT, VERSION, MANIFEST = "sweep-schnet-ensemble", 1, "ensemble.json"
DEFAULT_MEMORY_BUDGET = 256 << 20  # bytes of autograd state per batch (estimate; larger batches run slower on CPU)
_CHUNK_ATOMS = 1 << 18  # atoms per neighbour-search chunk (cutoff models)


class EnsembleError(ValueError):
    """An ensemble that cannot be built or applied (one line)."""


# -- batching -----------------------------------------------------------------------------------
def plan_batches(cost: np.ndarray, budget: float) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges whose summed ``cost`` stays ≤ ``budget`` (≥ 1 item each)."""
    cum = np.cumsum(cost, dtype=np.float64)
    out, start, n = [], 0, len(cost)
    while start < n:
        base = cum[start - 1] if start else 0.0
        stop = max(int(np.searchsorted(cum, base + budget, side="right")), start + 1)
        out.append((start, min(stop, n)))
        start = stop
    return out


# -- predictions -----------------------------------------------------------------------------------
@dataclass
class EnsemblePrediction:
    """Ensemble outputs for N molecules; energies in ``energy_unit``, forces in ``energy_unit``/Å.

    Stds follow ``STD_DDOF`` (sample std over members); ``calibrated`` says whether the stored
    recalibration was applied.
    """

    energy: np.ndarray  # [N] float64, member mean
    energy_std: np.ndarray  # [N]
    forces: np.ndarray | None  # [n_atoms, 3] member mean
    forces_std: np.ndarray | None  # [n_atoms, 3] per component
    forces_std_norm: np.ndarray | None  # [n_atoms] sqrt(σx² + σy² + σz²)
    forces_std_max: np.ndarray | None  # [N] max over the molecule's atoms of forces_std_norm
    forces_std_mean: np.ndarray | None  # [N] mean over the molecule's atoms of forces_std_norm
    atom_ptr: np.ndarray  # [N + 1]
    energy_unit: str
    calibrated: bool = False
    members_energy: np.ndarray | None = None  # [k, N] (only when asked for)
    members_forces: np.ndarray | None = None  # [k, n_atoms, 3]

    @property
    def force_unit(self) -> str:
        return force_unit(self.energy_unit)

    def scaled(self, calibration: Calibration) -> EnsemblePrediction:
        """The same prediction with its stds multiplied by ``calibration``'s scales (summaries recomputed):
        the one place a recalibration is applied to stds."""
        f_std = None if self.forces_std is None else self.forces_std * calibration.forces_scale
        norm, mx, mn = (None, None, None) if f_std is None else _summaries(f_std, self.atom_ptr)
        return replace(self, energy_std=self.energy_std * calibration.energy_scale, forces_std=f_std,
                       forces_std_norm=norm, forces_std_max=mx, forces_std_mean=mn,
                       calibrated=calibration.method != "identity")

    def to_unit(self, unit: str) -> EnsemblePrediction:
        """The same prediction with energies (and forces, stds) converted to ``unit``."""
        unit = canonical_energy_unit(unit)
        f = energy_factor(self.energy_unit, unit)
        if f == 1.0:
            return replace(self, energy_unit=unit)
        mul = lambda a: None if a is None else a * f  # noqa: E731
        return replace(self, energy=self.energy * f, energy_std=self.energy_std * f, forces=mul(self.forces),
                       forces_std=mul(self.forces_std), forces_std_norm=mul(self.forces_std_norm),
                       forces_std_max=mul(self.forces_std_max), forces_std_mean=mul(self.forces_std_mean),
                       members_energy=mul(self.members_energy), members_forces=mul(self.members_forces),
                       energy_unit=unit)


def _summaries(forces_std: np.ndarray, atom_ptr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(norm [n_atoms], per-molecule max [N], per-molecule mean [N]) of per-component force stds."""
    norm = np.sqrt(np.square(forces_std).sum(axis=1))  # [n_atoms]
    starts, counts = atom_ptr[:-1], np.diff(atom_ptr)
    return norm, np.maximum.reduceat(norm, starts), np.add.reduceat(norm, starts) / counts


# -- the ensemble ---------------------------------------------------------------------------------
class Ensemble:
    """k members of one architecture (SchNet or PaiNN), evaluated together (``SchNetEnsemble`` is its old name).

    Args:
        states: k state dicts (the layout of ``config``'s family), k ≥ 2.
        config: the members' common architecture.
        energy_unit: the training data's energy unit (forces per Å).
        elements: atomic numbers seen in training.
        calibration: std recalibration (default: none).
        meta: provenance (sweep, trial, run ids) kept in ``ensemble.json``.
    """

    def __init__(self, states: list[dict[str, torch.Tensor]], config: AnyConfig, energy_unit: str,
                 elements: list[int], calibration: Calibration | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        if len(states) < 2:
            raise EnsembleError(f"an ensemble needs at least 2 members (got {len(states)}); "
                                "its std is undefined otherwise")
        self.config = config
        self.k = len(states)
        self.energy_unit = canonical_energy_unit(energy_unit)
        self.elements = sorted(int(z) for z in elements)
        self.calibration = calibration or Calibration()
        self.meta = dict(meta or {})
        self._states = [{key: v.detach().cpu() for key, v in s.items()} for s in states]
        try:
            self.params = stack_states(self._states, config)  # [k, ...] per state-dict key
        except LayoutError as e:
            raise EnsembleError(str(e)) from None
        self.device = torch.device("cpu")

    # -- construction and files --
    @classmethod
    def from_models(cls, models: list[AnyModel], infos: list[ModelInfo], calibration: Calibration | None = None,
                    meta: dict[str, Any] | None = None) -> Ensemble:
        """From loaded members (same config, energy unit and elements required)."""
        cfgs = {json.dumps(m.config.model_dump(), sort_keys=True) for m in models}
        if len(cfgs) > 1:
            raise EnsembleError("members have different architectures; an ensemble needs one configuration")
        units = {canonical_energy_unit(i.energy_unit) for i in infos}
        if len(units) > 1:
            raise EnsembleError(f"members were trained in different energy units {sorted(units)}")
        elements = sorted({int(z) for i in infos for z in i.elements})
        return cls([m.state_dict() for m in models], models[0].config, units.pop(), elements, calibration, meta)

    @classmethod
    def from_model_dirs(cls, dirs: list[str | Path], calibration: Calibration | None = None,
                        meta: dict[str, Any] | None = None) -> Ensemble:
        """From model directories written by :func:`~schnet_model.save_model` (weights verified, never unpickled)."""
        loaded = [load_model(d) for d in dirs]
        return cls.from_models([m for m, _ in loaded], [i for _, i in loaded], calibration, meta)

    def member_models(self) -> list[AnyModel]:
        """The members as plain modules of their family (for checks and single-model use)."""
        out = []
        for st in self._states:
            m = build_model(self.config)
            m.load_state_dict(st, strict=True)
            out.append(m.eval())
        return out

    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the ensemble directory atomically: ``ensemble.json`` + ``member_<i>/`` model directories. An existing
        ensemble directory is replaced only with ``overwrite``, anything else never."""
        out = check_destination(out, "ensemble directory", MANIFEST, overwrite).resolve()
        with atomic_dir(out) as tmp:
            names = []
            for i, model in enumerate(self.member_models()):
                names.append(f"member_{i}")
                save_model(model, ModelInfo(self.energy_unit, self.elements), tmp / names[-1])
            manifest = {"format": FORMAT, "version": VERSION, "k": self.k, "members": names, "std_ddof": STD_DDOF,
                        "energy_unit": self.energy_unit, "force_unit": force_unit(self.energy_unit), "length_unit": "Å",
                        "elements": self.elements, "model": self.config.model_dump(),
                        "calibration": self.calibration.to_dict(), "meta": self.meta}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        return out

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Ensemble:
        """Load an ensemble directory, a downloaded MLflow model of one (``artifacts/ensemble``), or a
        directory of ≥ 2 model directories (uncalibrated)."""
        path = Path(path)
        if not path.is_dir():
            raise EnsembleError(f"{path}: no such directory")
        for cand in (path, path / "artifacts" / "ensemble", path / "ensemble"):
            if (cand / MANIFEST).is_file():
                return cls._load_manifest(cand).to(device)
        members = sorted(d for d in path.iterdir()
                         if (d / "config.json").is_file() and (d / "weights.safetensors").is_file())
        if len(members) >= 2:
            try:
                return cls.from_model_dirs(members, meta={"source": str(path)}).to(device)
            except ModelLoadError as e:
                raise EnsembleError(str(e)) from e
        raise EnsembleError(f"{path}: not an ensemble (no {MANIFEST}, and not a directory of ≥ 2 model directories)")

    @classmethod
    def _load_manifest(cls, path: Path) -> Ensemble:
        try:
            man = json.loads((path / MANIFEST).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EnsembleError(f"{path / MANIFEST}: malformed JSON ({e})") from e
        if man.get("format") != FORMAT or man.get("version") != VERSION:
            raise EnsembleError(f"{path / MANIFEST}: expected format {FORMAT!r} version {VERSION}")
        if man.get("std_ddof", STD_DDOF) != STD_DDOF:
            raise EnsembleError(f"{path / MANIFEST}: written with std ddof={man.get('std_ddof')}, "
                                f"this code uses {STD_DDOF}")
        try:
            ens = cls.from_model_dirs([path / m for m in man["members"]],
                                      Calibration.from_dict(man.get("calibration") or {}), man.get("meta") or {})
        except ModelLoadError as e:
            raise EnsembleError(str(e)) from e
        except KeyError as e:
            raise EnsembleError(f"{path / MANIFEST}: missing key {e}") from e
        return ens

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Ensemble:
        """Move (and optionally cast) the stacked weights; energy offsets stay float64."""
        if device is not None:
            self.device = torch.device(device)
        for key, v in self.params.items():
            cast = dtype if (dtype is not None and key not in OFFSET_KEYS) else None
            self.params[key] = v.to(device=self.device, dtype=cast)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.params["embedding.weight"].dtype

    # -- evaluation --
    def unseen_elements(self, Z: np.ndarray) -> list[int]:
        """Atomic numbers in ``Z`` that no member was trained on."""
        return sorted(set(np.unique(np.asarray(Z)).tolist()) - set(self.elements))

    def check_elements(self, Z: np.ndarray, where: str = "input") -> None:
        """Raise :class:`EnsembleError` naming unseen elements and the trained set."""
        unseen = self.unseen_elements(Z)
        if unseen:
            from schnet_model.data.molecules import element_names

            raise EnsembleError(f"{where}: elements not seen in training: {element_names(unseen)}; the ensemble was "
                                f"trained on {element_names(self.elements)}")

    def cost_per_molecule(self, n_atoms: np.ndarray, n_pairs: np.ndarray) -> np.ndarray:
        """Estimated bytes per molecule (``n_pairs`` unordered) for all k members: the batching budget's unit."""
        per_pair, per_atom = memory_per_item(self.config)
        item = torch.finfo(self.dtype).bits // 8
        return self.k * item * (per_pair * n_pairs.astype(np.float64) + per_atom * n_atoms.astype(np.float64))

    def iter_batches(self, mols: Molecules, memory_budget: int = DEFAULT_MEMORY_BUDGET
                     ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        """(first molecule, stop molecule, batch tensors) covering ``mols`` in order, memory-bounded."""
        counts, ptr, cutoff = mols.n_atoms, mols.atom_ptr, self.config.cutoff
        for c0, c1 in plan_batches(counts.astype(np.float64), _CHUNK_ATOMS):
            a0 = ptr[c0]
            cnt = counts[c0:c1]
            if cutoff is None:
                n_pairs, pairs, pair_ptr = cnt * (cnt - 1) // 2, None, None
            else:
                full, full_counts = cutoff_pairs_many(mols.R[a0 : ptr[c1]], ptr[c0 : c1 + 1] - a0, cutoff)
                keep = full[:, 0] < full[:, 1]  # each pair once
                pairs = full[keep]
                n_pairs = np.bincount(np.repeat(np.arange(len(cnt)), full_counts)[keep], minlength=len(cnt))
                pair_ptr = np.concatenate([[0], np.cumsum(n_pairs)])
            for b0, b1 in plan_batches(self.cost_per_molecule(cnt, n_pairs), memory_budget):
                s0, s1 = ptr[c0 + b0], ptr[c0 + b1]
                bc = cnt[b0:b1]
                if pairs is None:
                    pr = block_pairs(bc)
                else:
                    local_start = np.concatenate([[0], np.cumsum(bc)[:-1]])
                    pr = pairs[pair_ptr[b0] : pair_ptr[b1]] + np.repeat(local_start, n_pairs[b0:b1])[:, None]
                pt = torch.from_numpy(np.ascontiguousarray(pr, dtype=np.int64)).to(self.device)
                yield c0 + b0, c0 + b1, {
                    "Z": torch.from_numpy(mols.Z[s0:s1]).to(self.device),
                    "R": torch.from_numpy(mols.R[s0:s1]).to(self.device),
                    "mol": torch.repeat_interleave(torch.arange(len(bc)), torch.from_numpy(bc)).to(self.device),
                    "n_mols": torch.tensor(len(bc)),
                    "pi": pt[:, 0].contiguous(), "pj": pt[:, 1].contiguous()}

    def evaluate_batch(self, batch: dict[str, torch.Tensor], forces: bool = True, loop: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Member energies [k, n_mols] and forces [k, n_atoms, 3] of one batch.

        ``loop=True`` evaluates the members one after another with the same functional forward
        (the reference the vectorised pass is tested against, and the benchmark's baseline).
        """
        graph = Graph(batch["Z"][None], batch["R"][None], batch["mol"][None], int(batch["n_mols"]), batch["pi"][None],
                      batch["pj"][None])
        path = filter_path(self.device)
        with torch.no_grad():  # explicit forces: no autograd graph needed
            if not loop:
                return energies_forces(self.params, self.config, graph, forces, filters=path)
            outs = [energies_forces({key: v[m : m + 1] for key, v in self.params.items()}, self.config, graph, forces,
                                    filters=path) for m in range(self.k)]
        E = torch.cat([o[0] for o in outs])
        return E, (torch.cat([o[1] for o in outs]) if forces else None)  # type: ignore[misc]

    def predict(self, mols: Molecules, forces: bool = True, calibrated: bool = True, members: bool = False,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, loop: bool = False,
                progress: Callable[[int, int], None] | None = None) -> EnsemblePrediction:
        """Ensemble mean and std (ddof = STD_DDOF) for every molecule of ``mols`` (positions in Å).

        Args:
            mols: molecules; their energies/forces, if any, are ignored.
            forces: also forces (one backward pass for all members).
            calibrated: multiply stds by the stored recalibration.
            members: keep every member's predictions (``members_energy`` [k, N], ``members_forces``).
            memory_budget: bytes of autograd state per batch (estimate).
            loop: members one at a time (reference path).
            progress: called with (molecules done, total).
        """
        self.check_elements(mols.Z, mols.meta.get("source", mols.name))
        N, n_at, k = len(mols), len(mols.Z), self.k
        e_mean, e_std = np.empty(N), np.empty(N)
        f_mean = np.empty((n_at, 3)) if forces else None
        f_std = np.empty((n_at, 3)) if forces else None
        m_e = np.empty((k, N)) if members else None
        m_f = np.empty((k, n_at, 3)) if members and forces else None
        ptr = mols.atom_ptr
        for m0, m1, batch in self.iter_batches(mols, memory_budget):
            E, Fk = self.evaluate_batch(batch, forces, loop)  # [k, n], [k, n_atoms, 3]
            e_mean[m0:m1] = E.mean(0).cpu().numpy()
            e_std[m0:m1] = E.std(0, correction=STD_DDOF).cpu().numpy()
            if m_e is not None:
                m_e[:, m0:m1] = E.cpu().numpy()
            if Fk is not None:
                a0, a1 = ptr[m0], ptr[m1]
                F64 = Fk.to(torch.float64)
                f_mean[a0:a1] = F64.mean(0).cpu().numpy()  # type: ignore[index]
                f_std[a0:a1] = F64.std(0, correction=STD_DDOF).cpu().numpy()  # type: ignore[index]
                if m_f is not None:
                    m_f[:, a0:a1] = F64.cpu().numpy()
            if progress is not None:
                progress(m1, N)
        norm, mx, mn = (None, None, None) if f_std is None else _summaries(f_std, ptr)
        raw = EnsemblePrediction(e_mean, e_std, f_mean, f_std, norm, mx, mn, ptr.copy(), self.energy_unit,
                                 members_energy=m_e, members_forces=m_f)
        return raw.scaled(self.calibration) if calibrated else raw

    def predict_arrays(self, Z: np.ndarray, R: np.ndarray, atom_ptr: np.ndarray | None = None,
                       **kw: Any) -> EnsemblePrediction:
        """:meth:`predict` for raw arrays: ``Z`` [n_atoms], ``R`` [n_atoms, 3] Å, ``atom_ptr`` [N+1] (default: one
        molecule)."""
        ptr = np.array([0, len(Z)]) if atom_ptr is None else np.asarray(atom_ptr)
        mols = Molecules(Z=Z, R=R, atom_ptr=ptr, E=None, F=None, energy_unit=self.energy_unit, name="input")
        return self.predict(mols, **kw)


SchNetEnsemble = Ensemble  # the name before PaiNN: users' imports keep working

__all__ = ["STD_DDOF", "Ensemble", "EnsembleError", "EnsemblePrediction", "SchNetEnsemble", "block_pairs",
           "plan_batches"]
