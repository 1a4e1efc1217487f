"""Single-model training: loss, metrics, the trainer."""

from schnet_model.training.errors import NonFiniteLossError
from schnet_model.training.loss import energy_force_loss
from schnet_model.training.metrics import Metrics, evaluate, predict
from schnet_model.training.refit import OffsetRefit
from schnet_model.training.trainer import EpochResult, Trainer, TrainResult

__all__ = ["EpochResult", "Metrics", "NonFiniteLossError", "OffsetRefit", "TrainResult", "Trainer", "energy_force_loss",
           "evaluate", "predict"]
