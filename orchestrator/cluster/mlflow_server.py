"""``sweep mlflow-server``: an MLflow tracking server on a PostgreSQL backend store.

One directory holds everything: ``pgdata/`` (a PostgreSQL cluster of Debian's ``postgresql``
package, created on first use, password authentication, listening on 127.0.0.1 only),
``pgpass`` (the generated password, mode 0600, read by libpq through ``PGPASSFILE``: it never
appears on a command line), ``artifacts/`` (the server's artifact store: clients upload and
download fold models through the server, ``mlflow-artifacts:/`` URIs) and the logs. The server
binds 127.0.0.1 by default: on a cluster the driver runs on the head next to it, and people reach
it through a port-forward.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

USER, DATABASE = "mlflow", "mlflow"


class MlflowServerError(RuntimeError):
    """PostgreSQL or the MLflow server could not be set up or started; one line."""


class PostgresUnavailable(MlflowServerError):
    """PostgreSQL is not installed, or cannot run here (e.g. no ``postgres`` user when root)."""


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL program: on PATH, else the newest /usr/lib/postgresql/*/bin (Debian)."""
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if not cands:
        raise PostgresUnavailable(f"PostgreSQL's {name} not found: install it (apt-get install -y postgresql)")
    return cands[-1]


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no postgres user to run PostgreSQL as") from None


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return cmd
    _postgres_user()
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if r.returncode != 0:
        detail = (r.stderr or r.stdout).strip().splitlines()
        raise PostgresUnavailable(f"{what} failed: {detail[-1] if detail else r.returncode}")


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``root/pgdata`` serving database ``mlflow`` on 127.0.0.1:``port``."""

    root: Path
    port: int = 15432  # not 5432: Debian starts its own "main" cluster there

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def passfile(self) -> Path:
        return self.root / "pgpass"

    def uri(self) -> str:
        """SQLAlchemy URI without the password (libpq reads it from ``PGPASSFILE``)."""
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSFILE": str(self.passfile)}

    def init(self) -> None:
        """Create the cluster (password authentication only) unless it exists."""
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        pwfile = self.root / ".initpw"
        _write_private(pwfile, password + "\n")
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            pg = _postgres_user()
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
            for p in (self.pgdata, pwfile):
                os.chown(p, pg.pw_uid, pg.pw_gid)
            r = subprocess.run(_as_owner(["test", "-w", str(self.pgdata)]), capture_output=True)
            if r.returncode != 0:
                raise PostgresUnavailable(f"the postgres user cannot reach {self.pgdata} (a parent directory is "
                                          "private): use a directory such as /var/lib/sweep-mlflow")
        try:
            _run(_as_owner([pg_bin("initdb"), "-D", str(self.pgdata), "-U", USER, "--pwfile", str(pwfile),
                            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                            "--no-instructions"]), "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        _write_private(self.passfile, f"127.0.0.1:*:*:{USER}:{password}\n")

    def start(self) -> None:
        """Start the server (127.0.0.1 only, socket in pgdata) and create the database if needed."""
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.pgdata}"
        _run(_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(self.root / "postgres.log"), "-o", opts,
                        "-w", "-t", "60", "start"]), f"pg_ctl start (log: {self.root / 'postgres.log'})")
        import psycopg2

        con, last = None, None
        for _ in range(50):
            try:
                con = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                                       passfile=str(self.passfile), connect_timeout=5)
                break
            except psycopg2.OperationalError as e:
                last = e
                time.sleep(0.2)
        if con is None:
            raise PostgresUnavailable(f"cannot connect to PostgreSQL on 127.0.0.1:{self.port}: {str(last).strip()}")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (DATABASE,))
            if cur.fetchone() is None:
                cur.execute(f"create database {DATABASE}")
        con.close()

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            subprocess.run(_as_owner([pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"]),
                           capture_output=True, timeout=60)


@dataclass
class MlflowServer:
    """PostgreSQL + ``mlflow server`` (artifacts proxied through the server), started and stopped together."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 5000
    pg_port: int = 15432
    workers: int = 2
    postgres: Postgres = field(init=False)
    proc: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.postgres = Postgres(self.root, self.pg_port)

    @property
    def uri(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 180) -> str:
        """Start both; return the tracking URI once the server answers ``/health``."""
        self.postgres.init()
        self.postgres.start()
        (self.root / "artifacts").mkdir(exist_ok=True)
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow") or "mlflow"
        env = {**self.postgres.env(), "MLFLOW_BACKEND_STORE_URI": self.postgres.uri()}
        log = open(self.root / "mlflow-server.log", "a")  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen([mlflow, "server", "--serve-artifacts", "--artifacts-destination",
                                      str(self.root / "artifacts"), "--host", self.host, "--port", str(self.port),
                                      "--workers", str(self.workers)],
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = (self.root / "mlflow-server.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise MlflowServerError(f"mlflow server exited {self.proc.returncode}: {tail[0] if tail else ''}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise MlflowServerError(f"mlflow server did not answer on {self.uri} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the MLflow server (its whole process group), then PostgreSQL."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.postgres.stop()

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()




def _write_private(path: Path, text: str) -> None:
    """Write a secret into a file created with mode 0600 (never readable by others, not even for an instant)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)

__all__ = ["MlflowServer", "MlflowServerError", "Postgres", "PostgresUnavailable", "pg_bin"]
