"""The model directory: config + weights + units + elements, loaded without unpickling.

Layout::

    model/
      config.json          {"format": "sweep-schnet", "version": 1, "model": {"family": ..., ...}}
      weights.safetensors  state dict (float32 weights, float64 energy offsets)
      metadata.json        units, element list, weights sha256, metrics, provenance

Writes are atomic (a temporary directory renamed into place); loading verifies the weights'
sha256 and reads them with safetensors, never with pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from schnet_model.config import model_config
from schnet_model.files import atomic_dir, check_destination, sha256
from schnet_model.nn.family import AnyModel, build_model
from schnet_model.units import canonical_energy_unit

FORMAT = "sweep-schnet"
VERSION = 1
CONFIG, WEIGHTS, METADATA = "config.json", "weights.safetensors", "metadata.json"


class ModelLoadError(RuntimeError):
    """A model directory that is missing, malformed, tampered with or not safetensors."""


@dataclass
class ModelInfo:
    """What travels with the weights."""

    energy_unit: str
    elements: list[int]
    length_unit: str = "Å"
    extra: dict[str, Any] = field(default_factory=dict)




def save_model(model: AnyModel, info: ModelInfo, out: str | Path, extra_files: dict[str, str] | None = None,
               overwrite: bool = False) -> Path:
    """Write ``model``, ``info`` and ``extra_files`` (name → text) to directory ``out`` atomically; an existing model
    directory is replaced only with ``overwrite``, anything else never
    (:func:`~schnet_model.files.check_destination`)."""
    out = check_destination(out, "model directory", CONFIG, overwrite).resolve()
    with atomic_dir(out) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(
            json.dumps({"format": FORMAT, "version": VERSION, "model": model.config.model_dump()}, indent=2)
        )
        meta = {
            "energy_unit": canonical_energy_unit(info.energy_unit),
            "length_unit": info.length_unit,
            "force_unit": f"{canonical_energy_unit(info.energy_unit)}/{info.length_unit}",
            "elements": [int(z) for z in info.elements],
            "weights_sha256": sha256(tmp / WEIGHTS),
            **info.extra,
        }
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, default=str))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out


def load_model(path: str | Path, device: str = "cpu") -> tuple[AnyModel, ModelInfo]:
    """Load a model directory written by :func:`save_model` (no unpickling)."""
    path = Path(path)
    for name in (CONFIG, WEIGHTS, METADATA):
        if not (path / name).is_file():
            raise ModelLoadError(f"{path}: not a model directory (missing {name})")
    try:
        cfg = json.loads((path / CONFIG).read_text())
        meta = json.loads((path / METADATA).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: malformed JSON ({e})") from e
    if cfg.get("format") != FORMAT or cfg.get("version") != VERSION:
        raise ModelLoadError(f"{path / CONFIG}: expected format {FORMAT!r} version {VERSION}")
    try:
        config = model_config(cfg["model"])
    except (ValidationError, TypeError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{path / CONFIG}: invalid model config ({e})") from e
    digest = sha256(path / WEIGHTS)
    if digest != meta.get("weights_sha256"):
        raise ModelLoadError(
            f"{path / WEIGHTS}: sha256 {digest[:12]}… does not match metadata.json; refusing modified weights"
        )
    try:
        state = load_file(str(path / WEIGHTS), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path / WEIGHTS}: not a safetensors file ({e}); pickled checkpoints are refused") from e
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path / WEIGHTS}: weights do not fit the config ({str(e).splitlines()[0]})") from e
    model.to(device).eval()
    extra = {k: v for k, v in meta.items()
             if k not in ("energy_unit", "elements", "length_unit", "force_unit", "weights_sha256")}
    return model, ModelInfo(meta["energy_unit"], list(meta["elements"]), meta.get("length_unit", "Å"), extra)
