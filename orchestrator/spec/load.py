"""YAML specs: safe loading, ``--set`` overrides, validation with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schnet_model.config import (
    FAMILIES,
    AnyModelConfig,
    DatasetConfig,
    ModelConfig,
    StrictModel,
    TrainingConfig,
    family_key_hint,
    unknown_family,
)


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the file and key."""


class TrainSpec(StrictModel):
    """Spec of ``sweep train``: one model with fixed hyperparameters."""

    name: str | None = None
    dataset: DatasetConfig
    model: AnyModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'training.max_epochs=3'`` → (['training', 'max_epochs'], 3); values are YAML-typed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SpecError(f"--set {text!r}: expected dotted.key=value, e.g. training.max_epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, list[str]]:
    """Set each ``dotted.key=value`` in ``raw`` (in place); returns key → original --set text."""
    origin: dict[str, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None or child == "auto":  # `resources: auto` then one key set: explicit resources
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {text}: {'.'.join(path[: i + 1])} is {child!r}, not a section")
            node = child
        node[path[-1]] = value
        origin[".".join(path)] = text
    return origin


def format_error(err: dict[str, Any]) -> str:
    parts = [str(p) for p in err["loc"] if not str(p).startswith("function-")]
    family = parts.pop(1) if len(parts) > 1 and parts[0] == "model" and parts[1] in FAMILIES else None  # union tag
    loc = ".".join(parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = (family and len(parts) == 2 and family_key_hint(parts[1], family)) or "unknown key"
    elif err["type"] == "union_tag_invalid":
        msg = unknown_family(err["input"].get("family"))
        loc = ""
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif "input" in err and not isinstance(err["input"], dict):
        msg += f" (got {err['input']!r})"
    return f"{loc}: {msg}" if loc else msg


def validate(schema: type[StrictModel], raw: dict[str, Any], source: str, origin: dict[str, str] | None = None):
    """Validate ``raw`` against ``schema``; errors become one-line :class:`SpecError`."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            line = format_error(err)
            loc = ".".join(str(p) for p in err["loc"])
            hits = [t for k, t in (origin or {}).items()
                    if (loc and (loc == k or loc.startswith(k + ".") or k.startswith(loc + ".")))
                    or (not loc and k in line)]
            exact = [t for k, t in (origin or {}).items() if k == loc]
            blame = exact[-1] if exact else hits[-1] if hits else None  # the --set that put the value there: the last
            parts.append(f"{line} (from --set {blame})" if blame else line)
        raise SpecError(f"{source}: " + "; ".join(parts)) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last silently, and a
    spec's second ``training:`` section would drop the first one's search space)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """``yaml.safe_load`` of a spec file; a mapping or a one-line SpecError."""
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; expected a spec YAML file")
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path}: {where}invalid YAML ({problem})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw
