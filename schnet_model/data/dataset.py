"""What every reader returns: a :class:`Dataset` (molecules plus the source's official split)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.molecules import Molecules


@dataclass
class Dataset:
    """Molecules plus the official split of the source, when it has one."""

    molecules: Molecules
    test: np.ndarray | None = None  # official held-out test indices (ISO17 test db, rMD17 index_test)
    train_pool: np.ndarray | None = None  # official training pool (rMD17 index_train); None = all but test
    path: Path | None = None  # the file or directory read


Reader = Callable[[Path, DatasetConfig], Dataset]
"""``read(path, cfg) -> Dataset``: energies in the unit the file declares (or ``cfg.energy_unit``), positions in Å."""
