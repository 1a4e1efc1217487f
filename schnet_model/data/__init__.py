"""Datasets: readers, compact molecule storage, batching, splits."""

from schnet_model.data.batch import Batch
from schnet_model.data.load import read_dataset
from schnet_model.data.molecules import DataError, Molecules, iterate_batches
from schnet_model.data.splits import Split, random_split

__all__ = ["Batch", "DataError", "Molecules", "Split", "iterate_batches", "random_split", "read_dataset"]
