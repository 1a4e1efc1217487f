"""A real HTTP server on 127.0.0.1 for download tests, and small files in the official layouts."""

from __future__ import annotations

import io
import socket
import sqlite3
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


@dataclass
class Route:
    """A response: body, status, announced Content-Length (larger than the body = dropped connection), delay."""

    body: bytes = b""
    status: int = 200
    length: int | None = None
    delay: float = 0.0


class FileServer:
    """Serves :attr:`routes` (path -> bytes or :class:`Route`); unknown paths are 404. Counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                r = route if isinstance(route, Route) else Route(route)
                if r.delay:
                    time.sleep(r.delay)
                self.send_response(r.status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(r.body) if r.length is None else r.length))
                self.end_headers()
                self.wfile.write(r.body)
                self.wfile.flush()
                self.close_connection = True  # HTTP/1.0: the socket closes, short bodies end early

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve() -> Iterator[FileServer]:
    """Fixture body: a running server, shut down afterwards."""
    with FileServer() as s:
        yield s


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def md17_npz(n_frames: int = 20, seed: int = 0) -> bytes:
    """An MD17/sGDML-layout npz of ethanol-sized frames (R, z, E, F and the string keys)."""
    rng = np.random.default_rng(seed)
    z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
    base = np.array([[0, 0, 0], [1.5, 0, 0], [2.1, 1.2, 0], [-0.4, 1, 0], [-0.4, -0.5, 0.9], [-0.4, -0.5, -0.9],
                     [1.9, -0.5, 0.9], [1.9, -0.5, -0.9], [3.0, 1.2, 0]], dtype=float)
    R = base + rng.normal(0, 0.05, (n_frames, 9, 3))
    return npz_bytes(R=R, z=z, E=rng.normal(-97000, 1, (n_frames, 1)), F=rng.normal(0, 10, R.shape),
                     name=np.array("ethanol"), theory=np.array("PBE+vdW-TS"), e_unit=np.array("kcal/mol"),
                     r_unit=np.array("Ang"))


def _tar(members: dict[str, bytes], mode: str, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        dirs = sorted({str(Path(n).parent) for n in members} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


RMD17_MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene",
                   "paracetamol", "salicylic", "toluene", "uracil")


def rmd17_members(skip: str | None = None) -> dict[str, bytes]:
    """rmd17/npz_data/rmd17_<m>.npz (tiny, rMD17 keys) and rmd17/splits/index_{train,test}_0X.csv."""
    out = {"rmd17/readme.txt": b"placeholder rMD17 archive for tests\n"}
    for i, m in enumerate(RMD17_MOLECULES):
        out[f"rmd17/npz_data/rmd17_{m}.npz"] = npz_bytes(
            nuclear_charges=np.array([6, 1, 1, 1, 1]), coords=np.full((4, 5, 3), float(i)),
            energies=np.arange(4.0), forces=np.zeros((4, 5, 3)))
    for i in range(1, 6):
        out[f"rmd17/splits/index_train_0{i}.csv"] = b"0\n1\n"
        out[f"rmd17/splits/index_test_0{i}.csv"] = b"2\n3\n"
    if skip:
        del out[skip]
    return out


def rmd17_tar_bz2(skip: str | None = None, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    return _tar(rmd17_members(skip), "w:bz2", extra)


def sqlite_bytes(tmp: Path, name: str) -> bytes:
    """A real (tiny) SQLite database file."""
    p = tmp / name
    con = sqlite3.connect(p)
    con.execute("create table systems (id integer primary key, numbers blob)")
    con.commit()
    con.close()
    data = p.read_bytes()
    p.unlink()
    return data


def iso17_tar_gz(tmp: Path, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    dbs = ("reference.db", "reference_eq.db", "test_within.db", "test_other.db", "test_eq.db")
    return _tar({f"iso17/{db}": sqlite_bytes(tmp, db) for db in dbs}, "w:gz", extra)


def qm9_files() -> dict[str, bytes]:
    """The three QM9 files: an xyz tarball with two molecules, uncharacterized.txt, atomref.txt."""
    xyz = {
        "dsgdb9nsd_000001.xyz": b"5\ngdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641"
                                b"\t0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t\n"
                                b"C -0.0126981359 1.0858041578 0.0080009958 -0.535689\n"
                                b"H 0.002150416 -0.0060313176 0.0019761204 0.133921\n"
                                b"H 1.0117308433 1.4637511618 0.0002765748 0.133922\n"
                                b"H -0.540815069 1.4475266138 -0.8766437152 0.133923\n"
                                b"H -0.5238136345 1.4379326443 0.9063972942 0.133923\n"
                                b"1341.307 1341.3284 1341.365 1562.6731 1562.7453 3038.3205 "
                                b"3151.6034 3151.6788 3151.7078\n"
                                b"C\tC\nInChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4\n",
        "dsgdb9nsd_000002.xyz": b"4\ngdb 2\t293.60975\t293.54111\t191.39397\t1.6256\t9.46\t-0.257\t0.0829\t0.3399"
                                b"\t26.1563"
                                b"\t0.034358\t-56.525887\t-56.523026\t-56.522082\t-56.544961\t6.316\t\n"
                                b"N -0.0404260543 1.0241077531 0.0625637998 -0.707143\n"
                                b"H 0.0172574639 0.0125452063 -0.0273771593 0.235712\n"
                                b"H 0.9157893661 1.3587451948 -0.0287577581 0.235712\n"
                                b"H -0.5202777357 1.3435321258 -0.7755426124 0.235719\n"
                                b"1091.8372 1617.4 1617.4286 3414.5638 3516.1046 3516.2005\n"
                                b"N\tN\nInChI=1S/H3N/h1H3\tInChI=1S/H3N/h1H3\n",
    }
    uncharacterized = (b" Indices of 2 molecules which failed the geometry consistency check\n"
                       b" ----------------------------------------\n"
                       b"     Index  GDB17 ID  Corina  B3LYP  Diff\n"
                       b" ----------------------------------------\n"
                       b"        21   8 C(=O)... 0.0 0.1 0.1\n"
                       b"        22   9 C(=O)... 0.0 0.1 0.1\n"
                       b" ----------------------------------------\n")
    atomref = (b"   Element-wise atomic reference energies\n"
               b" =====================================================================\n"
               b"   Ele-    ZPVE         U (0 K)      U (298.15 K)    H (298.15 K)    G (298.15 K)     CV\n"
               b" =====================================================================\n"
               b"   H     0.000000     -0.500273      -0.498857       -0.497912       -0.510927       2.981\n"
               b"   C     0.000000    -37.846772     -37.845355      -37.844411      -37.861317       2.981\n"
               b"   N     0.000000    -54.583861     -54.582445      -54.581501      -54.598897       2.981\n"
               b"   O     0.000000    -75.064579     -75.063163      -75.062219      -75.079532       2.981\n"
               b"   F     0.000000    -99.718730     -99.717314      -99.716370      -99.733544       2.981\n"
               b" =====================================================================\n")
    return {"dsgdb9nsd.xyz.tar.bz2": _tar(xyz, "w:bz2"), "uncharacterized.txt": uncharacterized, "atomref.txt": atomref}


def unsafe_member(name: str = "../evil.txt") -> tarfile.TarInfo:
    """A tar member that would escape the extraction directory (its data is empty)."""
    info = tarfile.TarInfo(name)
    info.size = 0
    return info
