"""The public datasets this package can fetch and their molecule names: a leaf module (no I/O), so that the
config schema can validate a molecule name without importing the downloader."""

from __future__ import annotations

from schnet_model.data.molecules import DataError

DATASETS = ("md17", "rmd17", "iso17", "qm9")

MD17_FILES = {  # molecule -> file name on the sGDML page (quantum-machine.org/gdml/#datasets)
    "aspirin": "md17_aspirin.npz",
    "azobenzene": "azobenzene_dft.npz",
    "benzene": "md17_benzene2017.npz",
    "ethanol": "md17_ethanol.npz",
    "malonaldehyde": "md17_malonaldehyde.npz",
    "naphthalene": "md17_naphthalene.npz",
    "paracetamol": "paracetamol_dft.npz",
    "salicylic_acid": "md17_salicylic.npz",
    "toluene": "md17_toluene.npz",
    "uracil": "md17_uracil.npz",
}
RMD17_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
                   "paracetamol", "salicylic", "toluene", "uracil")
ALIASES = {"md17": {"salicylic": "salicylic_acid"}, "rmd17": {"salicylic_acid": "salicylic"}}


def known_molecules(dataset: str) -> tuple[str, ...]:
    """Molecule names of MD17 or rMD17."""
    return tuple(MD17_FILES) if dataset == "md17" else RMD17_MOLECULES


def normalize_molecule(dataset: str, molecule: str | None) -> str | None:
    """The canonical molecule name for ``dataset`` (``None`` when none is given and none is needed)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if dataset in ("iso17", "qm9"):
        if molecule:
            raise DataError(f"{dataset} has no molecule choice (got molecule {molecule!r}); "
                            "molecule is for md17 and rmd17")
        return None
    known = known_molecules(dataset)
    if not molecule:
        if dataset == "rmd17":
            return None
        raise DataError(f"{dataset} needs a molecule (known: {', '.join(known)})")
    name = molecule.strip().lower().replace("-", "_").replace(" ", "_")
    name = ALIASES[dataset].get(name, name)
    if name not in known:
        raise DataError(f"unknown {dataset} molecule {molecule!r} (known: {', '.join(known)})")
    return name


__all__ = ["ALIASES", "DATASETS", "MD17_FILES", "RMD17_MOLECULES", "known_molecules", "normalize_molecule"]
