"""Files written whole or not at all, and their checksums: the one place for both."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class AtomicFiles:
    """Temporary files next to their targets, renamed into place together by :meth:`commit`, removed otherwise (the
    one way this project writes a file: a reader never sees half of one, an error leaves the old one).

    ``mode`` ``"w"`` (UTF-8 text) or ``"wb"``; the temporary files are ``.NAME.<random><suffix>`` beside each target.
    """

    def __init__(self, *targets: str | Path, mode: str = "w", suffix: str = ".part") -> None:
        self.targets = [Path(t).resolve() for t in targets]
        self.mode, self.suffix = mode, suffix
        self.tmps: list[Path] = []
        self.handles: list[Any] = []

    def __enter__(self) -> list[Any]:
        for t in self.targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{t.name}.", suffix=self.suffix, dir=t.parent)
            self.tmps.append(Path(name))
            text = {} if "b" in self.mode else {"newline": "", "encoding": "utf-8"}
            self.handles.append(os.fdopen(fd, self.mode, **text))
        return self.handles

    def commit(self) -> None:
        for h in self.handles:
            h.flush()
            os.fsync(h.fileno())
            h.close()
        umask = os.umask(0)
        os.umask(umask)
        for tmp, t in zip(self.tmps, self.targets, strict=True):
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, t)
        self.tmps = []

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            if not h.closed:
                h.close()
        for tmp in self.tmps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", suffix: str = ".part") -> Iterator[Any]:
    """An open temporary file beside ``path``, renamed to ``path`` when the block succeeds (:class:`AtomicFiles`)."""
    files = AtomicFiles(path, mode=mode, suffix=suffix)
    with files as (handle,):
        yield handle
        files.commit()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    with atomic_file(path) as f:
        f.write(text)


class DestinationError(ValueError):
    """An output path this tool will not write (one line: the path and why)."""


def _writable_ancestor(out: Path) -> None:
    """Raise :class:`DestinationError` unless the nearest existing ancestor of ``out`` is a directory in which a
    file can be created (tried for real: permissions, read-only mounts and /proc say no only when asked)."""
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DestinationError(f"{out}: cannot write there ({parent} is a file, not a directory)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sweep-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DestinationError(f"{out}: cannot write there (creating a file in {parent}: "
                               f"{e.strerror or type(e).__name__})") from None


def check_destination(out: str | Path, kind: str, marker: str, overwrite: bool = False) -> Path:
    """Check, before any work, that directory ``out`` may be written: it does not exist, is empty, or is a ``kind``
    this tool wrote (it holds ``marker``) and ``overwrite`` was asked; and that it can be created. Nothing else is
    ever replaced: a file, or a directory of anything else, is refused with a one-line :class:`DestinationError`."""
    out = Path(out)
    a_kind = f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DestinationError(f"{out}: exists and is not a directory; choose another path for the {kind}")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise DestinationError(f"{out}: exists and is not {a_kind} this tool wrote (no {marker}); choose another "
                                   "path (nothing there is replaced)")
        if not overwrite:
            raise DestinationError(f"{out}: {a_kind} exists there; pass --overwrite to replace it")
    _writable_ancestor(out)
    return out


def check_file_destination(out: str | Path) -> Path:
    """Check, before any work, that file ``out`` can be written: not a directory, its directory creatable."""
    out = Path(out)
    if out.is_dir():
        raise DestinationError(f"{out}: is a directory; give a file name")
    _writable_ancestor(out)
    return out


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``out`` (replacing an old one) only when the
    block succeeds; on any error nothing is left behind and an existing ``out`` is untouched."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["AtomicFiles", "DestinationError", "atomic_dir", "atomic_file", "check_destination",
           "check_file_destination", "sha256", "write_text"]
