"""schnet_model: SchNet and PaiNN energies and forces, data batching and single-model training.

This package never imports Ray, MLflow or the orchestrator. Its names are imported on first use (PEP 562), so that
``schnet_model.config`` (the schemas a spec is validated against) loads without torch: a bad spec is reported in
well under a second.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_WHERE = {  # public name → the module that defines it
    "EnsembleCalculator": "schnet_model.calculator",  # ensemble ASE calculator
    "SchNetEnsembleCalculator": "schnet_model.calculator",
    "DatasetConfig": "schnet_model.config", "ModelConfig": "schnet_model.config",
    "PaiNNConfig": "schnet_model.config", "TrainingConfig": "schnet_model.config",
    "Batch": "schnet_model.data", "Molecules": "schnet_model.data", "read_dataset": "schnet_model.data",
    "ModelInfo": "schnet_model.model_dir", "ModelLoadError": "schnet_model.model_dir",
    "load_model": "schnet_model.model_dir", "save_model": "schnet_model.model_dir",
    "Prediction": "schnet_model.nn", "SchNet": "schnet_model.nn", "shifted_softplus": "schnet_model.nn",
    "PaiNN": "schnet_model.nn.painn",
    "NonFiniteLossError": "schnet_model.training", "Trainer": "schnet_model.training",
    "evaluate": "schnet_model.training",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'schnet_model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])

