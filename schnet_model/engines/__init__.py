"""The ensemble inside molecular-dynamics engines: OpenMM (:mod:`.openmm`) and i-PI (:mod:`.ipi`).

Each adapter converts the engine's units explicitly (OpenMM: nm, kJ/mol; i-PI: atomic units) and
hands the engine the ensemble mean, with the committee's uncertainty alongside.
"""
