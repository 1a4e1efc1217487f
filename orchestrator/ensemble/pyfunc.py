"""MLflow pyfunc model of a SchNet ensemble, logged as "models from code" (nothing is pickled).

MLflow stores this file with the model; loading it runs the file, which registers the model
object with :func:`mlflow.models.set_model`, then calls ``load_context`` with the logged
``ensemble`` artifact (an ensemble directory: ``ensemble.json`` + safetensors members).

Input of ``predict``: a pandas DataFrame (or a list of dicts / a dict of lists) with one row
per molecule: ``numbers`` (atomic numbers, length n) and ``positions`` (n×3 nested or 3n flat,
Å). Output: a DataFrame with ``energy``, ``energy_std``, ``forces_std_max``,
``forces_std_mean`` (floats), ``forces`` and ``forces_std`` (lists of n [x, y, z]) and
``energy_unit``; stds are the ensemble's calibrated sample stds (ddof = 1) in the training
data's units.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class SchNetEnsemblePyfunc(PythonModel):
    """Energies, forces and their calibrated ensemble stds for molecules."""

    def load_context(self, context: Any) -> None:
        from schnet_model.ensemble import Ensemble

        self.ensemble = Ensemble.load(context.artifacts["ensemble"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "numbers" not in df or "positions" not in df:
            raise ValueError("input needs columns 'numbers' and 'positions' (Å)")
        Z = [np.asarray(z, dtype=np.int64).reshape(-1) for z in df["numbers"]]
        R = [np.array([np.asarray(x, dtype=np.float64) for x in r]).reshape(-1, 3) for r in df["positions"]]
        for i, (z, r) in enumerate(zip(Z, R, strict=True)):
            if len(z) != len(r):
                raise ValueError(f"row {i}: {len(z)} numbers but {len(r)} positions")
        ptr = np.concatenate([[0], np.cumsum([len(z) for z in Z])])
        p = self.ensemble.predict_arrays(np.concatenate(Z), np.concatenate(R), ptr)
        split = lambda a: [a[ptr[i] : ptr[i + 1]].tolist() for i in range(len(Z))]  # noqa: E731
        return pd.DataFrame({"energy": p.energy, "energy_std": p.energy_std, "forces_std_max": p.forces_std_max,
                             "forces_std_mean": p.forces_std_mean, "forces": split(p.forces),
                             "forces_std": split(p.forces_std), "energy_unit": p.energy_unit})


mlflow.models.set_model(SchNetEnsemblePyfunc())
