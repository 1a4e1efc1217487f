"""MLflow tracking URIs: the one place that knows a ``sqlite:///FILE`` URI's file."""

from __future__ import annotations

from pathlib import Path

SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///FILE`` URI (relative or, with four slashes, absolute); None for others."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def resolve_uri(uri: str, base: Path) -> str:
    """``uri`` with a relative SQLite file or a bare directory made absolute against ``base``; others unchanged."""
    path = sqlite_path(uri)
    if path is not None:
        return uri if path.is_absolute() else SQLITE + str((base / path).resolve())
    return uri if "://" in uri else str((base / uri).resolve())


__all__ = ["SQLITE", "resolve_uri", "sqlite_path"]
