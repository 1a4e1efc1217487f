"""Model directory: round trip, refusal of tampered or pickled weights, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import random_molecules, small_model

from schnet_model import ModelInfo, ModelLoadError, load_model, save_model
from schnet_model.files import DestinationError
from schnet_model.training import predict


def _saved(tmp_path):
    model = small_model(torch.float32, cutoff=4.0)
    out = save_model(model, ModelInfo("kcal/mol", [1, 6, 7, 8], extra={"note": "x"}), tmp_path / "m")
    return model, out


def test_save_load_gives_identical_predictions(tmp_path):
    model, out = _saved(tmp_path)
    loaded, info = load_model(out)
    data = random_molecules(5)
    p0, p1 = predict(model, data), predict(loaded, data)
    assert np.array_equal(p0.energy, p1.energy) and np.array_equal(p0.forces, p1.forces)
    assert info.energy_unit == "kcal/mol" and info.elements == [1, 6, 7, 8] and info.extra["note"] == "x"
    assert loaded.config == model.config and loaded.offsets.atomref.dtype == torch.float64
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["force_unit"] == "kcal/mol/Å"


def test_tampered_weights_are_refused(tmp_path):
    _, out = _saved(tmp_path)
    blob = bytearray((out / "weights.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (out / "weights.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="does not match metadata.json"):
        load_model(out)


def test_pickled_weights_are_refused_even_with_matching_hash(tmp_path):
    model, out = _saved(tmp_path)
    torch.save(model.state_dict(), out / "weights.safetensors")  # a pickle
    import hashlib

    meta = json.loads((out / "metadata.json").read_text())
    meta["weights_sha256"] = hashlib.sha256((out / "weights.safetensors").read_bytes()).hexdigest()
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        load_model(out)


def test_missing_parts_and_wrong_config(tmp_path):
    _, out = _saved(tmp_path)
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(tmp_path / "elsewhere")
    cfg = json.loads((out / "config.json").read_text())
    cfg["model"]["n_interactions"] = 5
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="weights do not fit the config"):
        load_model(out)


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    model, out = _saved(tmp_path)
    with pytest.raises(DestinationError, match="a model directory exists there; pass --overwrite to replace it"):
        save_model(model, ModelInfo("eV", [1]), out)  # its own model directory: replaced only when asked
    save_model(model, ModelInfo("eV", [1]), out, overwrite=True)
    assert json.loads((out / "metadata.json").read_text())["energy_unit"] == "eV"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("keep me")
    with pytest.raises(DestinationError, match="is not a model directory this tool wrote"):
        save_model(model, ModelInfo("eV", [1]), tmp_path / "other")
    assert (tmp_path / "other" / "file.txt").read_text() == "keep me"
