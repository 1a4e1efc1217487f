"""`sweep data download`: official-source fetching against a real HTTP server on 127.0.0.1.

Checks atomic placement, the trust-on-first-use manifest, known checksums, structural checks,
network failures (404, refused, dropped, timeout, interrupt) and the one-line errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT
from http_fixtures import (
    FileServer,
    Route,
    closed_port_url,
    iso17_tar_gz,
    md17_npz,
    qm9_files,
    rmd17_tar_bz2,
    serve,
    unsafe_member,
)

from schnet_model.config import DatasetConfig
from schnet_model.data import download as dl
from schnet_model.data.download import DownloadError, fetch
from schnet_model.data.load import load_dataset
from schnet_model.data.molecules import DataError

ETHANOL = "/md17/md17_ethanol.npz"


@pytest.fixture
def server() -> FileServer:
    yield from serve()


@pytest.fixture
def cache(tmp_path, monkeypatch, server) -> Path:
    """An empty cache; every URL points at the local server; short timeouts; no known checksums."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SWEEP_DATA", str(root))
    monkeypatch.setenv("SWEEP_DATA_MIRROR", server.url)
    monkeypatch.setenv("SWEEP_DATA_TIMEOUT", "5")
    for var in [v for v in os.environ if v.startswith("SWEEP_DATA_MIRROR_")]:
        monkeypatch.delenv(var)
    monkeypatch.setattr(dl, "KNOWN_SHA256", {})
    return root


def leftovers(root: Path) -> list[Path]:
    """Temporary files or directories of a fetch."""
    return [p for p in root.rglob("*") if p.name.endswith(".part") or p.name.startswith(".extract-")]


def manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())["files"] if (root / "manifest.json").exists() else {}


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- success, cache, manifest


def test_md17_download_lands_atomically_with_manifest(cache, server):
    body = md17_npz()
    server.routes[ETHANOL] = body
    path = fetch("md17", "ethanol", progress=False)
    assert path == cache / "md17" / "md17_ethanol.npz"
    assert path.read_bytes() == body
    assert server.requests == [ETHANOL]
    assert not leftovers(cache)
    rec = manifest(cache)["md17/md17_ethanol.npz"]
    assert rec["sha256"] == hashlib.sha256(body).hexdigest() and rec["size"] == len(body)
    assert rec["url"] == server.url + ETHANOL and rec["source"] == "downloaded"


def test_cached_file_makes_no_request(cache, server):
    server.routes[ETHANOL] = md17_npz()
    fetch("md17", "ethanol", progress=False)
    fetch("md17", "ethanol", progress=False)
    fetch("md17", "Ethanol", progress=False, full_check=True)  # re-hash: still no network
    os.utime(cache / "md17" / "md17_ethanol.npz", ns=(1, 1))  # touched, same bytes
    fetch("md17", "ethanol", progress=False)
    assert server.requests == [ETHANOL]
    assert manifest(cache)["md17/md17_ethanol.npz"]["mtime_ns"] == 1


def test_modified_cached_file_is_detected(cache, server):
    server.routes[ETHANOL] = md17_npz()
    path = fetch("md17", "ethanol", progress=False)
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(DownloadError) as e:
        fetch("md17", "ethanol", progress=False)
    msg = one_line(e)
    assert str(path) in msg and "modified" in msg and "delete it" in msg
    assert server.requests == [ETHANOL]


def test_redownload_with_other_bytes_is_refused(cache, server):
    first = md17_npz(seed=0)
    server.routes[ETHANOL] = first
    path = fetch("md17", "ethanol", progress=False)
    path.unlink()
    server.routes[ETHANOL] = md17_npz(seed=1)  # the server's file changed: trust on first use catches it
    with pytest.raises(DownloadError) as e:
        fetch("md17", "ethanol", progress=False)
    msg = one_line(e)
    assert server.url + ETHANOL in msg and hashlib.sha256(first).hexdigest() in msg
    assert hashlib.sha256(server.routes[ETHANOL]).hexdigest() in msg
    assert not path.exists() and not leftovers(cache)
    server.routes[ETHANOL] = first  # the original bytes are accepted again
    assert fetch("md17", "ethanol", progress=False).read_bytes() == first


def test_known_checksum_mismatch_deletes_the_download(cache, server, monkeypatch):
    body = md17_npz()
    server.routes[ETHANOL] = body
    monkeypatch.setitem(dl.KNOWN_SHA256, "md17/md17_ethanol.npz", "0" * 64)
    with pytest.raises(DownloadError) as e:
        fetch("md17", "ethanol", progress=False)
    msg = one_line(e)
    assert server.url + ETHANOL in msg and "0" * 64 in msg and hashlib.sha256(body).hexdigest() in msg
    assert not (cache / "md17" / "md17_ethanol.npz").exists() and not leftovers(cache)
    assert "md17/md17_ethanol.npz" not in manifest(cache)
    # the right digest (or a 12-digit prefix of it) passes
    monkeypatch.setitem(dl.KNOWN_SHA256, "md17/md17_ethanol.npz", hashlib.sha256(body).hexdigest()[:12])
    assert fetch("md17", "ethanol", progress=False).exists()


def test_corrupted_npz_fails_the_structural_check(cache, server):
    server.routes[ETHANOL] = b"<html><body>Service unavailable</body></html>"
    with pytest.raises(DownloadError) as e:
        fetch("md17", "ethanol", progress=False)
    msg = one_line(e)
    assert server.url + ETHANOL in msg and "npz" in msg
    assert not (cache / "md17" / "md17_ethanol.npz").exists() and not leftovers(cache)
    body = md17_npz()
    server.routes[ETHANOL] = body[:-40] + bytes(40)  # damaged zip tail
    with pytest.raises(DownloadError):
        fetch("md17", "ethanol", progress=False)
    assert list((cache / "md17").iterdir()) == []


def test_file_placed_by_hand_is_adopted_without_network(cache, server):
    (cache / "md17").mkdir(parents=True)
    (cache / "md17" / "md17_ethanol.npz").write_bytes(md17_npz())
    path = fetch("md17", "ethanol", progress=False)
    assert server.requests == []
    assert manifest(cache)["md17/md17_ethanol.npz"]["source"] == "placed in the cache"
    (cache / "md17" / "md17_aspirin.npz").write_bytes(b"not an npz")
    with pytest.raises(DownloadError) as e:
        fetch("md17", "aspirin", progress=False)
    assert "md17_aspirin.npz" in one_line(e) and "delete it" in str(e.value)
    assert path.exists()


# ---------------------------------------------------------------- network failures


def expect_network_error(cache: Path, url: str) -> str:
    with pytest.raises(DownloadError) as e:
        fetch("md17", "ethanol", progress=False)
    msg = one_line(e)
    assert url in msg and str(cache / "md17" / "md17_ethanol.npz") in msg and "by hand" in msg
    assert not (cache / "md17" / "md17_ethanol.npz").exists() and not leftovers(cache)
    return msg


def test_http_404(cache, server):
    assert "404" in expect_network_error(cache, server.url + ETHANOL)


def test_connection_refused(cache, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("SWEEP_DATA_MIRROR_MD17", url + "/files")  # per-dataset mirror wins
    assert "refused" in expect_network_error(cache, url + "/files/md17_ethanol.npz").lower()


def test_dropped_connection_leaves_no_partial_file(cache, server):
    body = md17_npz()
    server.routes[ETHANOL] = Route(body[: len(body) // 2], length=len(body))
    msg = expect_network_error(cache, server.url + ETHANOL)
    assert f"closed after {len(body) // 2} of {len(body)} bytes" in msg


def test_timeout(cache, server, monkeypatch):
    monkeypatch.setenv("SWEEP_DATA_TIMEOUT", "0.3")
    server.routes[ETHANOL] = Route(md17_npz(), delay=1.0)
    assert "timed out" in expect_network_error(cache, server.url + ETHANOL)


def test_keyboard_interrupt_leaves_no_partial_file(cache, server, monkeypatch):
    server.routes[ETHANOL] = md17_npz()

    @contextlib.contextmanager
    def interrupting_bar(label, total, enabled):
        def advance(n):
            raise KeyboardInterrupt

        yield advance

    monkeypatch.setattr(dl, "_bar", interrupting_bar)
    with pytest.raises(KeyboardInterrupt):
        fetch("md17", "ethanol")
    assert not (cache / "md17" / "md17_ethanol.npz").exists() and not leftovers(cache)
    assert manifest(cache) == {}


def test_stale_temp_files_of_a_killed_fetch_are_removed(cache, server):
    (cache / "md17").mkdir(parents=True)
    (cache / "md17" / ".md17_ethanol.npz.abc.part").write_bytes(b"half")
    (cache / "md17" / ".extract-xyz").mkdir()
    server.routes[ETHANOL] = md17_npz()
    fetch("md17", "ethanol", progress=False)
    assert not leftovers(cache)


# ---------------------------------------------------------------- archives and QM9


def test_rmd17_archive_extracted_atomically(cache, server):
    server.routes["/rmd17/rmd17.tar.bz2"] = rmd17_tar_bz2()
    path = fetch("rmd17", "aspirin", progress=False)
    assert path == cache / "rmd17" / "rmd17" / "npz_data" / "rmd17_aspirin.npz" and path.is_file()
    assert (cache / "rmd17" / "rmd17" / "splits" / "index_test_05.csv").read_text() == "2\n3\n"
    assert (cache / "rmd17" / "rmd17.tar.bz2").is_file() and not leftovers(cache)
    files = manifest(cache)
    assert files["rmd17/rmd17.tar.bz2"]["source"] == "downloaded"
    assert files["rmd17/rmd17/npz_data/rmd17_aspirin.npz"]["from"] == "rmd17/rmd17.tar.bz2"
    assert fetch("rmd17", "salicylic_acid", progress=False).name == "rmd17_salicylic.npz"
    assert fetch("rmd17", None, progress=False) == cache / "rmd17" / "rmd17"
    assert server.requests == ["/rmd17/rmd17.tar.bz2"]
    # extracted files: modification detected; a deleted directory is extracted again without network
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(DownloadError) as e:
        fetch("rmd17", "aspirin", progress=False)
    assert "modified" in one_line(e) and "extract it again" in str(e.value)
    shutil.rmtree(cache / "rmd17" / "rmd17")
    assert fetch("rmd17", "aspirin", progress=False).is_file()
    assert server.requests == ["/rmd17/rmd17.tar.bz2"] and not leftovers(cache)


def test_archive_missing_a_member_is_rejected(cache, server):
    server.routes["/rmd17/rmd17.tar.bz2"] = rmd17_tar_bz2(skip="rmd17/splits/index_train_03.csv")
    with pytest.raises(DownloadError) as e:
        fetch("rmd17", "aspirin", progress=False)
    msg = one_line(e)
    assert server.url + "/rmd17/rmd17.tar.bz2" in msg and "index_train_03.csv" in msg
    assert list((cache / "rmd17").iterdir()) == [] and manifest(cache) == {}


def test_archive_with_unsafe_member_is_rejected(cache, server, tmp_path):
    server.routes["/iso17/iso17.tar.gz"] = iso17_tar_gz(tmp_path, extra=[unsafe_member("../../evil.txt")])
    with pytest.raises(DownloadError) as e:
        fetch("iso17", progress=False)
    assert "unsafe member" in one_line(e)
    assert not list(tmp_path.rglob("evil.txt")) and list((cache / "iso17").iterdir()) == []


def test_broken_archive_is_rejected(cache, server):
    server.routes["/iso17/iso17.tar.gz"] = b"\x1f\x8b\x08 not really gzip"
    with pytest.raises(DownloadError) as e:
        fetch("iso17", progress=False)
    assert "tar" in one_line(e) and not leftovers(cache)
    assert list((cache / "iso17").iterdir()) == []


def test_iso17_directory(cache, server, tmp_path):
    server.routes["/iso17/iso17.tar.gz"] = iso17_tar_gz(tmp_path)
    path = fetch("iso17", progress=False)
    assert path == cache / "iso17" / "iso17"
    assert sorted(p.name for p in path.iterdir()) == sorted(dl.ISO17_DBS)
    assert (path / "reference.db").read_bytes()[:15] == b"SQLite format 3"
    fetch("iso17", progress=False)
    assert server.requests == ["/iso17/iso17.tar.gz"] and not leftovers(cache)


def test_qm9_files(cache, server):
    for name, body in qm9_files().items():
        server.routes[f"/qm9/{name}"] = body
    path = fetch("qm9", progress=False)
    assert path == cache / "qm9" / "dsgdb9nsd.xyz.tar.bz2"
    assert (path.parent / "uncharacterized.txt").is_file() and (path.parent / "atomref.txt").is_file()
    assert set(manifest(cache)) == {f"qm9/{n}" for n in dl.QM9_FILES}
    server.routes["/qm9/atomref.txt"] = b"<html>404</html>"
    (path.parent / "atomref.txt").unlink()
    with pytest.raises(DownloadError) as e:
        fetch("qm9", progress=False)
    assert "atomref" in one_line(e)


# ---------------------------------------------------------------- names, locations, URLs


def test_molecule_names():
    assert dl.normalize_molecule("md17", "Salicylic") == "salicylic_acid"
    assert dl.normalize_molecule("rmd17", "salicylic-acid") == "salicylic"
    with pytest.raises(DataError, match="known: aspirin, azobenzene, benzene"):
        dl.normalize_molecule("md17", "caffeine")
    with pytest.raises(DataError, match="needs a molecule"):
        fetch("md17", None)
    with pytest.raises(DataError, match="unknown dataset"):
        fetch("md22", "aspirin")
    with pytest.raises(DataError, match="no molecule choice"):
        fetch("qm9", "aspirin")


def test_fetch_for_config_lists_molecules_for_unknown_or_missing():
    cfg = DatasetConfig.model_construct(download="rmd17", molecule=None, path=None)
    with pytest.raises(DataError, match="known: aspirin"):
        dl.fetch_for_config(cfg)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="molecule: unknown md17 molecule 'caffeine' \\(known: aspirin"):
        DatasetConfig(download="md17", molecule="caffeine")  # refused when the spec is read, before any download


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SWEEP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.cache_dir() == tmp_path / "xdg" / "sweep" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.cache_dir() == tmp_path / "home" / ".cache" / "sweep" / "data"
    monkeypatch.setenv("SWEEP_DATA", str(tmp_path / "env"))
    assert dl.cache_dir() == tmp_path / "env"
    assert dl.cache_dir(tmp_path / "dest") == tmp_path / "dest"


def test_url_table_and_mirrors(monkeypatch):
    for var in [v for v in os.environ if v.startswith("SWEEP_DATA_MIRROR")]:
        monkeypatch.delenv(var)
    assert dl.url_for("md17/md17_benzene2017.npz") == "http://www.quantum-machine.org/gdml/data/npz/md17_benzene2017.npz"
    assert dl.url_for("rmd17/rmd17.tar.bz2") == "https://figshare.com/ndownloader/files/23950376"
    assert dl.url_for("iso17/iso17.tar.gz") == "http://www.quantum-machine.org/datasets/iso17.tar.gz"
    assert dl.url_for("qm9/atomref.txt") == "https://figshare.com/ndownloader/files/3195395"
    monkeypatch.setenv("SWEEP_DATA_MIRROR", "http://mirror.example/data/")
    assert dl.url_for("qm9/atomref.txt") == "http://mirror.example/data/qm9/atomref.txt"
    monkeypatch.setenv("SWEEP_DATA_MIRROR_QM9", "file:///srv/qm9")
    assert dl.url_for("qm9/atomref.txt") == "file:///srv/qm9/atomref.txt"
    # every file has a structural check or is an extracted archive
    assert set(dl.URLS) == set(dl.FILE_CHECKS) | set(dl.ARCHIVES)
    assert set(dl.KNOWN_SHA256) <= set(dl.URLS)


# ---------------------------------------------------------------- end to end


def test_load_dataset_downloads_md17(cache, server):
    server.routes[ETHANOL] = md17_npz(n_frames=30)
    ds = load_dataset(DatasetConfig(download="md17", molecule="ethanol", n_train=10, n_val=5, n_test=5))
    assert ds.path == cache / "md17" / "md17_ethanol.npz"
    assert len(ds.molecules) == 30 and ds.molecules.energy_unit == "kcal/mol"
    load_dataset(DatasetConfig(download="md17", molecule="ethanol"))
    assert server.requests == [ETHANOL]


def sweep_download(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "data", "download", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_cli(tmp_path, server):
    dest = tmp_path / "dest"
    env = {"SWEEP_DATA": str(tmp_path / "unused"), "SWEEP_DATA_MIRROR": server.url, "SWEEP_DATA_TIMEOUT": "5"}
    server.routes[ETHANOL] = md17_npz()
    r = sweep_download("md17", "--molecule", "ethanol", "--dest", str(dest), env=env)
    assert r.returncode == 0, r.stderr
    assert str(dest / "md17" / "md17_ethanol.npz") in r.stdout and server.requests == [ETHANOL]
    assert not (tmp_path / "unused").exists()

    r = sweep_download("md17", "--molecule", "aspirin", env=env)  # 404, cache from $SWEEP_DATA
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert server.url + "/md17/md17_aspirin.npz" in r.stderr and "404" in r.stderr
    assert str(tmp_path / "unused" / "md17" / "md17_aspirin.npz") in r.stderr

    r = sweep_download("md22", env=env)
    assert r.returncode != 0 and "unknown dataset" in r.stderr and r.stderr.strip().count("\n") == 0


def test_concurrent_fetches_download_once(cache, server):
    server.routes[ETHANOL] = Route(md17_npz(), delay=0.3)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fetch("md17", "ethanol", progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 2 and results[0] == results[1] and results[0].is_file()
    assert server.requests == [ETHANOL] and not leftovers(cache)
