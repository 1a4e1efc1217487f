"""Neural-network building blocks and the SchNet model."""

from schnet_model.nn.activations import shifted_softplus
from schnet_model.nn.schnet import Prediction, SchNet

__all__ = ["Prediction", "SchNet", "shifted_softplus"]
