"""Energy and length units.

Every dataset declares its energy unit and its length unit. Internally the model works in
Ångström (positions are converted when read) and in the dataset's own energy unit; metrics
and predictions can be converted to any unit known here.
"""

from __future__ import annotations

# Conversion factors to the reference unit (eV for energy, Å for length).
# CODATA 2018 values, as used by ASE (ase.units).
_EV_PER: dict[str, float] = {
    "eV": 1.0,
    "meV": 1e-3,
    "Ha": 27.211386245988,
    "kcal/mol": 4.184 * 0.010364269656262174,  # the thermochemical calorie: exactly 4.184 kJ/mol
    "kJ/mol": 0.010364269656262174,  # 1000 / (N_A e), both exact in SI
}
_ANGSTROM_PER: dict[str, float] = {
    "Å": 1.0,
    "bohr": 0.529177210903,
    "nm": 10.0,
}
# Spellings accepted in files and specs, mapped to the canonical names above.
_ALIASES: dict[str, str] = {
    "ev": "eV",
    "mev": "meV",
    "ha": "Ha",
    "hartree": "Ha",
    "eh": "Ha",
    "kcal/mol": "kcal/mol",
    "kcal mol-1": "kcal/mol",
    "kcal_mol": "kcal/mol",
    "kj/mol": "kJ/mol",
    "kj mol-1": "kJ/mol",
    "å": "Å",
    "a": "Å",
    "ang": "Å",
    "angstrom": "Å",
    "bohr": "bohr",
    "a0": "bohr",
    "nm": "nm",
}

ENERGY_UNITS = tuple(_EV_PER)
LENGTH_UNITS = tuple(_ANGSTROM_PER)


class UnitError(ValueError):
    """An unknown or mismatched unit."""


def canonical_energy_unit(name: str) -> str:
    """Return the canonical spelling of an energy unit (``'kcal/mol'``, ``'eV'``, ...)."""
    canon = _ALIASES.get(name.strip().lower(), name.strip())
    if canon not in _EV_PER:
        raise UnitError(f"unknown energy unit {name!r}; expected one of {', '.join(ENERGY_UNITS)}")
    return canon


def canonical_length_unit(name: str) -> str:
    """Return the canonical spelling of a length unit (``'Å'``, ``'bohr'``, ``'nm'``)."""
    canon = _ALIASES.get(name.strip().lower(), name.strip())
    if canon not in _ANGSTROM_PER:
        raise UnitError(f"unknown length unit {name!r}; expected one of {', '.join(LENGTH_UNITS)}")
    return canon


def energy_factor(src: str, dst: str) -> float:
    """Multiply an energy in ``src`` by this factor to get it in ``dst``."""
    return _EV_PER[canonical_energy_unit(src)] / _EV_PER[canonical_energy_unit(dst)]


def length_factor(src: str, dst: str = "Å") -> float:
    """Multiply a length in ``src`` by this factor to get it in ``dst``."""
    return _ANGSTROM_PER[canonical_length_unit(src)] / _ANGSTROM_PER[canonical_length_unit(dst)]


def force_unit(energy_unit: str, length_unit: str = "Å") -> str:
    """The force unit label for an energy and a length unit, e.g. ``'kcal/mol/Å'``."""
    return f"{canonical_energy_unit(energy_unit)}/{canonical_length_unit(length_unit)}"
