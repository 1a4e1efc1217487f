"""schnet_model: SchNet and PaiNN energies and forces, data batching and single-model training.

This package never imports Ray, MLflow or the orchestrator.
"""

from schnet_model.calculator import EnsembleCalculator as EnsembleCalculator  # ensemble ASE calculator
from schnet_model.calculator import SchNetEnsembleCalculator as SchNetEnsembleCalculator
from schnet_model.config import DatasetConfig, ModelConfig, PaiNNConfig, TrainingConfig
from schnet_model.data import Batch, Molecules, read_dataset
from schnet_model.model_dir import ModelInfo, ModelLoadError, load_model, save_model
from schnet_model.nn import Prediction, SchNet, shifted_softplus
from schnet_model.nn.painn import PaiNN
from schnet_model.training import NonFiniteLossError, Trainer, evaluate

__version__ = "0.1.0"

__all__ = [
    "Batch", "DatasetConfig", "EnsembleCalculator", "ModelConfig", "ModelInfo", "ModelLoadError", "Molecules",
    "NonFiniteLossError", "PaiNN", "PaiNNConfig", "Prediction", "SchNet", "SchNetEnsembleCalculator", "Trainer",
    "TrainingConfig", "evaluate", "load_model", "read_dataset", "save_model", "shifted_softplus",
]
