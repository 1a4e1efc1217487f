"""A campaign's datasets: one versioned npz per round, the previous round's molecules plus the newly labelled ones.

Every version is an MD17-layout npz (``R`` Å, ``z``, ``E`` and ``F`` in the campaign's energy unit)
with a per-frame ``round`` array (0 = the starting data) and a JSON sidecar recording its sha256,
its parent's sha256, how many molecules the round added, which sweep's ensemble chose them and how.
The fixed test set is never part of it (it stays in ``dataset.test_path``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from schnet_model.data.generate import write_npz
from schnet_model.data.molecules import DataError, Molecules
from schnet_model.files import sha256, write_text
from schnet_model.units import energy_factor


@dataclass
class Version:
    """One round's dataset file and its provenance."""

    round: int
    path: str
    sha256: str
    n_molecules: int
    added: int  # molecules this round added (0 for the starting data)
    parent_sha256: str | None  # the previous round's dataset
    chosen_by: str | None  # the sweep whose ensemble selected the added molecules
    strategy: str | None
    method: str | None  # the reference method that labelled them
    energy_unit: str = "kcal/mol"

    def sidecar(self) -> Path:
        return Path(self.path).with_suffix(".json")


def _arrays(mols: Molecules) -> dict[str, np.ndarray]:
    """MD17-layout arrays of molecules that are all the same molecule (same atoms in the same order)."""
    n = mols.n_atoms
    z = mols.Z[: n[0]]
    if (n != n[0]).any() or not (mols.Z.reshape(len(mols), -1) == z).all():
        raise DataError(f"{mols.meta.get('source', mols.name)}: sweep learn grows datasets of one molecule "
                        "(the same atoms in the same order in every frame)")
    if mols.E is None or mols.F is None:
        raise DataError(f"{mols.meta.get('source', mols.name)}: sweep learn needs reference energies and forces")
    return {"R": mols.R.reshape(len(mols), n[0], 3), "z": z.astype(np.uint8), "E": mols.E,
            "F": mols.F.reshape(len(mols), n[0], 3), "e_unit": np.array(mols.energy_unit), "r_unit": np.array("Ang")}


def write_version(arrays: dict[str, np.ndarray], out: Path, version: dict) -> Version:
    """Write the npz and its sidecar (each atomically); the sidecar last, so a version with a sidecar is whole."""
    write_npz(arrays, out)
    v = Version(path=str(out), sha256=sha256(out), n_molecules=len(arrays["E"]), energy_unit=str(arrays["e_unit"]),
                **version)
    write_text(v.sidecar(), json.dumps(asdict(v), indent=2))
    return v


def initial(mols: Molecules, pool: np.ndarray, out: Path, theory: str) -> Version:
    """Round 0: the spec's CV pool of molecules (``pool`` indices into ``mols``)."""
    arrays = _arrays(mols.subset(np.sort(pool)))
    arrays.update(round=np.zeros(len(pool), np.int16), theory=np.array(theory))
    return write_version(arrays, out, dict(round=0, added=0, parent_sha256=None, chosen_by=None, strategy=None,
                                           method=None))


def grow(prev: Version, labelled: dict[str, np.ndarray], out: Path, *, round_: int, chosen_by: str, strategy: str,
         method: str) -> Version:
    """``prev`` plus ``labelled`` (MD17-layout arrays in kcal/mol, as the labeller writes them) as round ``round_``."""
    with np.load(prev.path, allow_pickle=False) as npz:
        old = {k: npz[k] for k in npz.files}
    if not np.array_equal(old["z"], labelled["z"]):
        raise DataError(f"labelled molecules have atoms {labelled['z'].tolist()}, the dataset {old['z'].tolist()}")
    f = energy_factor("kcal/mol", prev.energy_unit)
    n = len(labelled["E"])
    arrays = dict(old)
    arrays.update(R=np.concatenate([old["R"], labelled["R"]]), E=np.concatenate([old["E"], labelled["E"] * f]),
                  F=np.concatenate([old["F"], labelled["F"] * f]),
                  round=np.concatenate([old["round"], np.full(n, round_, np.int16)]))
    return write_version(arrays, out, dict(round=round_, added=n, parent_sha256=prev.sha256, chosen_by=chosen_by,
                                           strategy=strategy, method=method))


__all__ = ["Version", "grow", "initial", "write_version"]
