"""Real multi-node Ray on one machine: each node is its own ``ray start --block`` process group.

Every node gets its own temp dir (so no ``ray.init()`` elsewhere on the machine attaches to this
cluster), free ports, and token authentication (``RAY_AUTH_MODE=token`` with one shared token, as
a real multi-node cluster should run). Ray maps 127.0.0.1 to the machine's own interface address;
no traffic leaves the machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    node_id: str = ""


def _pids_under(temp_dir: Path) -> list[int]:
    """Processes whose command line names this node's (unique) temp dir: the node's raylet, GCS, agents."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(temp_dir) in cmd:
                out.append(int(d.name))
    return out


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        kids = [c for c, p in parent.items() if p in frontier]
        out += kids
        frontier = kids
    return out


class LocalRayCluster:
    """A head and worker nodes as separate Ray node processes on this machine."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.port = free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0", **env}
        self.env.pop("RAY_ADDRESS", None)
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], timeout: float = 90, prefix: tuple[str, ...] = ()) -> RayNode:
        temp_dir = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
        log = self.root / f"{temp_dir.name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([*prefix, RAY, "start", "--block", f"--temp-dir={temp_dir}",
                                     "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}", *args],
                                    env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(proc, temp_dir, log)
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = log.read_text(errors="replace")
            if "Ray runtime started" in text:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited {proc.returncode}: {text[-2000:]}")
            time.sleep(0.2)
        else:
            raise TimeoutError(f"ray start did not finish in {timeout} s: {log.read_text()[-2000:]}")
        node.node_id = self._node_id(temp_dir)
        return node

    @staticmethod
    def _node_id(temp_dir: Path) -> str:
        for pid in _pids_under(temp_dir):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            m = re.search(r"raylet/raylet .*--node_id=([0-9a-f]+)", cmd)
            if m:
                return m.group(1)
        return ""

    def start_head(self, num_cpus: float, resources: str = "{}") -> RayNode:
        self.head = self._start(["--head", f"--port={self.port}", "--include-dashboard=false",
                                 f"--dashboard-port={free_port()}",
                                 f"--num-cpus={num_cpus}", f"--resources={resources}"])
        return self.head

    def add_worker(self, num_cpus: float, resources: str = "{}", hide: Path | None = None) -> RayNode:
        """A worker node; ``hide``: a directory this node sees empty (its own mount namespace, a tmpfs on top)."""
        prefix: tuple[str, ...] = ()
        if hide is not None:
            prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                      f"mount -t tmpfs none '{hide}' && exec \"$@\"", "sh")
        node = self._start([f"--address={self.address}", f"--num-cpus={num_cpus}", f"--resources={resources}"],
                           prefix=prefix)
        self.workers.append(node)
        return node

    def kill(self, node: RayNode) -> None:
        """Lose the node at once: SIGKILL ``ray start`` and every process it started (raylet, GCS, workers)."""
        doomed = {node.proc.pid, *_descendants(node.proc.pid), *_pids_under(node.temp_dir)}
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.proc.wait(timeout=30)
        if node in self.workers:
            self.workers.remove(node)

    def stop(self, node: RayNode) -> None:
        """Stop the node gracefully (SIGTERM to ``ray start --block``), then make sure nothing is left."""
        try:
            os.killpg(node.proc.pid, signal.SIGTERM)
            node.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill(node)

    def shutdown(self) -> None:
        for node in list(self.workers):
            self.stop(node)
        if self.head is not None:
            self.stop(self.head)
            self.head = None
        for log in self.root.glob("rn*.log"):
            shutil.rmtree(Path("/tmp") / log.stem, ignore_errors=True)


def can_hide_directories() -> str | None:
    """None when ``unshare --mount`` works here (root, a kernel that allows it); else the reason it does not."""
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare: {e}"
    return None if r.returncode == 0 else f"unshare --mount: {r.stderr.strip() or r.returncode}"
