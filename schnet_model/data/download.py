"""Fetch MD17, rMD17, ISO17 and QM9 from their official sources into a local cache.

Layout of the cache (``--dest``, else ``$SWEEP_DATA``, else ``$XDG_CACHE_HOME/sweep/data``, else
``~/.cache/sweep/data``)::

    <cache>/manifest.json                      sha256, size, URL and date of every cached file
    <cache>/md17/md17_<molecule>.npz           MD17 (sGDML npz)
    <cache>/rmd17/rmd17.tar.bz2                rMD17 archive, extracted next to it into rmd17/
    <cache>/rmd17/rmd17/npz_data/rmd17_<molecule>.npz, rmd17/splits/index_{train,test}_0X.csv
    <cache>/iso17/iso17.tar.gz                 ISO17 archive, extracted into iso17/ (the dataset path)
    <cache>/qm9/dsgdb9nsd.xyz.tar.bz2          QM9 xyz tarball (kept as is), uncharacterized.txt, atomref.txt

Verification. Every download is checked structurally (the npz opens with the expected keys and
passes its zip CRCs, an archive extracts with the expected members, a text file has the expected
lines) and against :data:`KNOWN_SHA256` where a digest is known. The sha256 of the first good
download is recorded in the manifest ("trust on first use"): a later re-download with other bytes
or a cached file modified since is an error. Downloads go to a temporary file in the destination
directory and are moved into place with :func:`os.replace` only once verified; archives are
extracted into a temporary directory that is renamed into place. A file that is cached and
recorded is used without any network access.

Mirrors (tests, offline sites): ``SWEEP_DATA_MIRROR=URL`` fetches every file from
``URL/<dataset>/<file name>``; ``SWEEP_DATA_MIRROR_<DATASET>=URL`` (e.g. ``SWEEP_DATA_MIRROR_MD17``)
fetches that dataset's files from ``URL/<file name>`` and wins over the former. File names are
the cache names above. ``SWEEP_DATA_TIMEOUT`` sets the network timeout in seconds (default 60).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from schnet_model.config import DatasetConfig
from schnet_model.data.catalog import (  # noqa: F401 (re-exported: the names users import from here)
    ALIASES,
    DATASETS,
    MD17_FILES,
    RMD17_MOLECULES,
    known_molecules,
    normalize_molecule,
)
from schnet_model.data.iso17 import ISO17_DBS
from schnet_model.data.molecules import DataError
from schnet_model.files import atomic_file, sha256

try:  # POSIX: serialise concurrent fetches into one cache (e.g. parallel search trials)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None  # type: ignore[assignment]

MD17_BASE = "http://www.quantum-machine.org/gdml/data/npz/"
QM9_TARBALL = "dsgdb9nsd.xyz.tar.bz2"
QM9_FILES = (QM9_TARBALL, "uncharacterized.txt", "atomref.txt")

#: The official sources: cache key ``<dataset>/<file name>`` -> URL.
URLS: dict[str, str] = {
    **{f"md17/{name}": MD17_BASE + name for name in MD17_FILES.values()},
    # rMD17, Christensen & von Lilienfeld, figshare doi:10.6084/m9.figshare.12672038
    "rmd17/rmd17.tar.bz2": "https://figshare.com/ndownloader/files/23950376",
    # ISO17, Schütt et al. 2017, quantum-machine.org/datasets
    "iso17/iso17.tar.gz": "http://www.quantum-machine.org/datasets/iso17.tar.gz",
    # QM9, Ramakrishnan et al. 2014, figshare doi:10.6084/m9.figshare.c.978904
    f"qm9/{QM9_TARBALL}": "https://figshare.com/ndownloader/files/3195389",
    "qm9/uncharacterized.txt": "https://figshare.com/ndownloader/files/3195404",
    "qm9/atomref.txt": "https://figshare.com/ndownloader/files/3195395",
}

#: Known sha256 digests (a full digest or a prefix of at least 12 hex digits) per cache key.
#: Only values observed by others are listed; the data owners publish none. Files missing here
#: are verified structurally and by the digest recorded at their first download.
KNOWN_SHA256: dict[str, str] = {
    # first 12 hex digits, from jla-gardner/load-atoms (database/importers/rmd17.py, qm9.py)
    "rmd17/rmd17.tar.bz2": "cddeea2ec2c4",
    f"qm9/{QM9_TARBALL}": "3a63848ac806",
}

MANIFEST = "manifest.json"
USER_AGENT = "sweep-schnet/0.1 (urllib)"
_CHUNK = 1 << 20


class DownloadError(DataError):
    """A download failed or a cached file does not verify."""


class _Invalid(Exception):
    """A file fails its structural check."""


# ---------------------------------------------------------------- locations and names


def cache_dir(dest: str | Path | None = None) -> Path:
    """The cache root: ``dest``, ``$SWEEP_DATA``, ``$XDG_CACHE_HOME/sweep/data`` or ``~/.cache/sweep/data``."""
    if dest is not None:
        return Path(dest).expanduser()
    if os.environ.get("SWEEP_DATA"):
        return Path(os.environ["SWEEP_DATA"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "sweep" / "data"


def url_for(key: str) -> str:
    """The URL of cache key ``<dataset>/<name>``, honouring the mirror variables."""
    dataset, name = key.split("/", 1)
    if mirror := os.environ.get(f"SWEEP_DATA_MIRROR_{dataset.upper()}"):
        return f"{mirror.rstrip('/')}/{name}"
    if mirror := os.environ.get("SWEEP_DATA_MIRROR"):
        return f"{mirror.rstrip('/')}/{dataset}/{name}"
    return URLS[key]


def _timeout() -> float:
    raw = os.environ.get("SWEEP_DATA_TIMEOUT", "60")
    try:
        t = float(raw)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise DataError(f"SWEEP_DATA_TIMEOUT={raw!r}: expected a positive number of seconds")
    return t


# ---------------------------------------------------------------- structural checks


def _check_npz(path: Path, keys: tuple[str, ...]) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise _Invalid(f"npz member {bad} fails its CRC check")
        with np.load(path, allow_pickle=False) as npz:
            files = set(npz.files)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise _Invalid(f"not a readable npz file ({e})") from e
    if missing := [k for k in keys if k not in files]:
        raise _Invalid(f"npz lacks keys {missing} (has {sorted(files)})")


def _check_sqlite(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise _Invalid(f"{path.name} is not an SQLite (ASE) database")


def _read_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError as e:
        raise _Invalid(f"not an ASCII text file ({e.reason} at byte {e.start})") from e


def _check_uncharacterized(path: Path) -> None:
    if not any(len(t := line.split()) >= 2 and t[0].isdigit() for line in _read_text(path)):
        raise _Invalid("no lines starting with a molecule index: not QM9's uncharacterized.txt")


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _check_atomref(path: Path) -> None:
    rows = {t[0] for line in _read_text(path) if len(t := line.split()) >= 7 and all(map(_is_float, t[1:7]))}
    if missing := [el for el in ("H", "C", "N", "O", "F") if el not in rows]:
        raise _Invalid(f"no reference-energy rows for {missing}: not QM9's atomref.txt")


_QM9_XYZ = re.compile(r"dsgdb9nsd_\d{6}\.xyz")


def _tar_mode(name: str) -> str:
    return "r:bz2" if name.endswith(".bz2") else "r:gz" if name.endswith(".gz") else "r:"


def _check_qm9_tarball(path: Path) -> None:
    n = 0
    try:
        with tarfile.open(path, "r:bz2") as tar:
            for m in tar:
                if m.isfile():
                    if not _QM9_XYZ.fullmatch(posixpath.basename(m.name)):
                        raise _Invalid(f"unexpected member {m.name!r} (expected dsgdb9nsd_NNNNNN.xyz)")
                    n += 1
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise _Invalid(f"not a readable tar.bz2 archive ({e})") from e
    if n == 0:
        raise _Invalid("the archive holds no dsgdb9nsd_NNNNNN.xyz files")


#: Structural checks of single (not extracted) files, by cache key.
FILE_CHECKS: dict[str, Callable[[Path], None]] = {
    **{f"md17/{name}": (lambda p: _check_npz(p, ("R", "z", "E", "F"))) for name in MD17_FILES.values()},
    f"qm9/{QM9_TARBALL}": _check_qm9_tarball,
    "qm9/uncharacterized.txt": _check_uncharacterized,
    "qm9/atomref.txt": _check_atomref,
}


def _rmd17_members() -> dict[str, Callable[[Path], None] | None]:
    out: dict[str, Callable[[Path], None] | None] = {
        f"rmd17/npz_data/rmd17_{m}.npz": (lambda p: _check_npz(p, ("nuclear_charges", "coords", "energies")))
        for m in RMD17_MOLECULES
    }
    for i in range(1, 6):
        out[f"rmd17/splits/index_train_0{i}.csv"] = None
        out[f"rmd17/splits/index_test_0{i}.csv"] = None
    return out


#: Archives that are extracted: cache key -> (top directory, required members and their checks).
ARCHIVES: dict[str, tuple[str, dict[str, Callable[[Path], None] | None]]] = {
    "rmd17/rmd17.tar.bz2": ("rmd17", _rmd17_members()),
    "iso17/iso17.tar.gz": ("iso17", {f"iso17/{db}": _check_sqlite for db in ISO17_DBS}),
}


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _bar(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr; yields ``advance(n_bytes)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    cols = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn()]
    with Progress(*cols, console=Console(stderr=True), transient=True) as p:
        task = p.add_task(label, total=total)
        yield lambda n: p.advance(task, n)


class _Counting:
    """A read-only file wrapper that reports the bytes read (extraction progress)."""

    def __init__(self, f: BinaryIO, advance: Callable[[int], None]) -> None:
        self._f, self._advance = f, advance

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self._advance(len(b))
        return b

    def __getattr__(self, name: str):  # seek, tell, close, ...
        return getattr(self._f, name)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(root / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _safe_member(name: str) -> str | None:
    """The normalised relative path of an archive member, ``None`` for '.', error when unsafe."""
    if "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise _Invalid(f"unsafe member name {name!r}")
    norm = posixpath.normpath(name)
    if norm == ".":
        return None
    if norm == ".." or norm.startswith("../"):
        raise _Invalid(f"unsafe member name {name!r}")
    return norm


def _extract(archive: Path, mode: str, into: Path, advance: Callable[[int], None]) -> dict[str, str]:
    """Extract the regular files and directories of a tar archive; sha256 per extracted file."""
    digests: dict[str, str] = {}
    with open(archive, "rb") as raw, tarfile.open(fileobj=_Counting(raw, advance), mode=mode) as tar:
        for m in tar:
            name = _safe_member(m.name)
            if name is None:
                continue
            target = into / name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                h = hashlib.sha256()
                with src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                digests[name] = h.hexdigest()
            # links, devices and FIFOs are not extracted
    return digests


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the cache


class _Cache:
    """One locked fetch session on a cache root."""

    def __init__(self, root: Path, progress: bool, full_check: bool) -> None:
        self.root, self.progress, self.full_check = root, progress, full_check
        self.manifest_path = root / MANIFEST
        self.files: dict[str, dict] = self._load_manifest()

    # manifest
    def _load_manifest(self) -> dict[str, dict]:
        if not self.manifest_path.exists():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text())
            files = data["files"]
            if not isinstance(files, dict):
                raise TypeError("files is not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DownloadError(f"{self.manifest_path}: unreadable manifest ({e}); delete it to start a new one") from e
        return files

    def _save_manifest(self) -> None:
        with atomic_file(self.manifest_path) as f:  # .manifest.json.*.part until renamed (_remove_stale)
            json.dump({"version": 1, "files": self.files}, f, indent=1, sort_keys=True)

    def _record(self, key: str, digest: str, **extra: str) -> None:
        st = (self.root / key).stat()
        self.files[key] = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "recorded": _now(),
                           **extra}

    # verification
    def _verify_recorded(self, key: str, hint: str) -> None:
        """Check a cached, recorded file against the manifest (size and mtime, else sha256)."""
        rec, path = self.files[key], self.root / key
        if not path.is_file():
            raise DownloadError(f"{path}: missing, but recorded in {self.manifest_path}; {hint}")
        st = path.stat()
        if not self.full_check and st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            return
        digest = sha256(path)
        if digest != rec["sha256"]:
            raise DownloadError(
                f"{path}: modified since it was cached: sha256 {digest}, expected {rec['sha256']} "
                f"(recorded in {self.manifest_path}); {hint}"
            )
        if (st.st_size, st.st_mtime_ns) != (rec["size"], rec["mtime_ns"]):
            rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            self._save_manifest()

    def _check_digest(self, key: str, digest: str, what: str, after: str) -> None:
        """Known checksum, then the digest recorded at the first download (trust on first use)."""
        known = KNOWN_SHA256.get(key)
        if known and not digest.startswith(known.lower()):
            raise DownloadError(f"{what}: sha256 mismatch: expected {known}, got {digest}; {after}")
        rec = self.files.get(key)
        if rec and rec["sha256"] != digest:
            raise DownloadError(
                f"{what}: sha256 mismatch: expected {rec['sha256']} (recorded in {self.manifest_path} on "
                f"{rec.get('recorded', '?')}), got {digest}: the file changed since the first download; {after} "
                f"(remove the entry {key!r} from the manifest to accept the new file)"
            )

    # network
    def _download(self, key: str) -> tuple[Path, str]:
        """Download ``key`` to a temporary file next to its destination; (temp path, sha256)."""
        url, dest = url_for(key), self.root / key
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        h, n, total = hashlib.sha256(), 0, None
        try:
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(
                    urllib.request.Request(url, headers={"User-Agent": USER_AGENT}), timeout=_timeout()
                ) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with _bar(dest.name, total, self.progress) as advance:
                        while chunk := resp.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            n += len(chunk)
                            advance(len(chunk))
                if total is not None and n != total:
                    raise DownloadError(f"connection closed after {n} of {total} bytes")
            except urllib.error.HTTPError as e:
                raise DownloadError(f"HTTP {e.code} {e.reason}") from e
            except urllib.error.URLError as e:
                raise DownloadError(str(e.reason)) from e
            except TimeoutError as e:
                raise DownloadError(f"timed out after {_timeout():g} s (SWEEP_DATA_TIMEOUT)") from e
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise DownloadError(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        except DownloadError as e:
            tmp.unlink(missing_ok=True)
            raise DownloadError(f"cannot download {url}: {e}; download it by hand and save it as {dest}") from e
        except BaseException:  # KeyboardInterrupt included: leave no partial file
            tmp.unlink(missing_ok=True)
            raise
        return tmp, h.hexdigest()

    # single files
    def file(self, key: str) -> Path:
        """The verified local copy of a single (not extracted) file, downloading it when missing."""
        path, check = self.root / key, FILE_CHECKS[key]
        if path.exists():
            if key in self.files:
                self._verify_recorded(key, "delete it to download it again")
                return path
            # placed by hand: verify and adopt
            digest = sha256(path)
            self._check_digest(key, digest, str(path), "delete it to download it again")
            try:
                check(path)
            except _Invalid as e:
                raise DownloadError(f"{path}: {e}; delete it to download it again") from e
            self._record(key, digest, url=url_for(key), source="placed in the cache")
            self._save_manifest()
            return path
        url = url_for(key)
        tmp, digest = self._download(key)
        try:
            self._check_digest(key, digest, url, "the download was deleted")
            try:
                check(tmp)
            except _Invalid as e:
                raise DownloadError(f"{url}: {e}; the download was deleted") from e
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._record(key, digest, url=url, source="downloaded")
        self._save_manifest()
        return path

    # archives
    def archive(self, key: str) -> Path:
        """The verified extracted directory of an archive, downloading and extracting when missing."""
        top, required = ARCHIVES[key]
        dataset_dir = self.root / key.split("/")[0]
        target = dataset_dir / top
        extracted = sorted(k for k, r in self.files.items() if r.get("from") == key)
        if target.exists():
            if extracted:
                for k in extracted:
                    self._verify_recorded(k, f"delete {target} to extract it again")
                return target
            # extracted by hand: check the members and record them
            try:
                self._check_members(dataset_dir, required)
            except _Invalid as e:
                raise DownloadError(f"{target}: {e}; delete it to extract it again") from e
            for p in sorted(q for q in target.rglob("*") if q.is_file()):
                self._record(p.relative_to(self.root).as_posix(), sha256(p), source="placed in the cache",
                             **{"from": key})
            self._save_manifest()
            return target
        apath, url = self.root / key, url_for(key)
        if apath.exists():
            if key in self.files:
                self._verify_recorded(key, "delete it to download it again")
                digest = self.files[key]["sha256"]
            else:
                digest = sha256(apath)
                self._check_digest(key, digest, str(apath), "delete it to download it again")
            digests = self._extract_into_place(key, apath, None,
                                               lambda e: f"{apath}: {e}; delete it to download it again")
            if key not in self.files:
                self._record(key, digest, url=url, source="placed in the cache")
        else:
            tmp, digest = self._download(key)
            try:
                self._check_digest(key, digest, url, "the download was deleted")
                digests = self._extract_into_place(key, tmp, apath, lambda e: f"{url}: {e}; the download was deleted")
            finally:
                tmp.unlink(missing_ok=True)
            self._record(key, digest, url=url, source="downloaded")
        for k in extracted:
            del self.files[k]
        for rel, d in sorted(digests.items()):
            self._record(rel, d, **{"from": key})
        self._save_manifest()
        return target

    def _check_members(self, base: Path, required: dict[str, Callable[[Path], None] | None]) -> None:
        missing = [m for m in required if not (base / m).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise _Invalid(f"the archive lacks {', '.join(missing[:3])}{more}")
        for m, check in required.items():
            if check is not None:
                try:
                    check(base / m)
                except _Invalid as e:
                    raise _Invalid(f"{m}: {e}") from e

    def _extract_into_place(self, key: str, archive: Path, move_archive_to: Path | None,
                            err: Callable[[object], str]) -> dict[str, str]:
        """Extract into a temporary directory, check the members, rename into place (then move the archive).

        Returns the sha256 of every extracted file by cache key.
        """
        top, required = ARCHIVES[key]
        dataset_dir = archive.parent
        tmpdir = Path(tempfile.mkdtemp(dir=dataset_dir, prefix=".extract-"))
        try:
            try:
                with _bar(f"extracting {Path(key).name}", archive.stat().st_size, self.progress) as advance:
                    digests = _extract(archive, _tar_mode(key), tmpdir, advance)
                self._check_members(tmpdir, required)
            except _Invalid as e:
                raise DownloadError(err(e)) from e
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DownloadError(err(f"not a readable {Path(key).suffix[1:]} tar archive ({e})")) from e
            prefix = key.split("/")[0]
            os.replace(tmpdir / top, dataset_dir / top)
            if move_archive_to is not None:
                os.replace(archive, move_archive_to)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return {f"{prefix}/{k}": d for k, d in digests.items() if k.startswith(top + "/")}


def _remove_stale(dataset_dir: Path) -> None:
    """Temporary files of an interrupted fetch (we hold the lock, so nobody else is writing)."""
    for p in [*dataset_dir.glob(".*.part"), *dataset_dir.parent.glob(".manifest*.part")]:
        p.unlink(missing_ok=True)
    for p in dataset_dir.glob(".extract-*"):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- public API


def fetch(dataset: str, molecule: str | None = None, dest: str | Path | None = None, *,
          progress: bool = True, full_check: bool = False) -> Path:
    """Download (when not cached) and verify a dataset; the local path its reader needs.

    Args:
        dataset: ``md17``, ``rmd17``, ``iso17`` or ``qm9``.
        molecule: MD17/rMD17 molecule (``None`` for rMD17 returns the extracted ``rmd17/`` directory).
        dest: the cache root (default :func:`cache_dir`).
        progress: show Rich progress bars on stderr.
        full_check: re-hash cached files even when their size and mtime match the manifest.

    Returns:
        md17: the npz; rmd17: ``rmd17/npz_data/rmd17_<molecule>.npz``; iso17: the ``iso17/``
        directory; qm9: the xyz tarball (``uncharacterized.txt`` and ``atomref.txt`` beside it).
    """
    mol = normalize_molecule(dataset, molecule)
    root = cache_dir(dest)
    dataset_dir = root / dataset
    try:
        dataset_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{dataset_dir}: cannot create the cache directory ({e})") from e
    with _locked(root):
        _remove_stale(dataset_dir)
        cache = _Cache(root, progress, full_check)
        if dataset == "md17":
            assert mol is not None
            return cache.file(f"md17/{MD17_FILES[mol]}")
        if dataset == "qm9":
            for name in QM9_FILES:
                cache.file(f"qm9/{name}")
            return dataset_dir / QM9_TARBALL
        top = cache.archive("rmd17/rmd17.tar.bz2" if dataset == "rmd17" else "iso17/iso17.tar.gz")
        return top / "npz_data" / f"rmd17_{mol}.npz" if mol else top


def fetch_for_config(cfg: DatasetConfig) -> Path:
    """The local path of ``cfg.download`` (and ``cfg.molecule``), fetched into the cache when missing."""
    if cfg.download is None:
        raise DataError("dataset.download is not set")
    if cfg.download == "rmd17" and not cfg.molecule:
        raise DataError(f"dataset.download: rmd17 needs dataset.molecule (known: {', '.join(RMD17_MOLECULES)})")
    return fetch(cfg.download, cfg.molecule)
