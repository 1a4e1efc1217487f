"""A real one-node Slurm cluster for the tests: Debian's ``munge``, ``slurmctld`` and ``slurmd`` started in a
temporary directory (their own key, socket, ports, state and logs; nothing under /etc or /run is touched), as root.

Skips, saying why, where the packages are missing (``.ci/run`` installs them: ``apt-get install slurm-wlm munge``)
or the tests do not run as root (slurmd must)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin")
                                       if (p := Path(d) / name).is_file()), None)


@dataclass
class Slurm:
    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)

    def job_state(self, job: str) -> str:
        """PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, … (finished jobs are kept MinJobAge seconds)."""
        out = self.run(_which("scontrol") or "scontrol", "show", "job", job, "-o").stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def wait_for(self, job: str, states: tuple[str, ...], timeout: float) -> str:
        """The job's state once it is one of ``states`` and none of its processes is left (a cancelled job is
        CANCELLED at once, but its processes have KillWait seconds to end: squeue lists it until they have)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_state(job)
            listed = self.run(_which("squeue") or "squeue", "-h", "-j", job, "-o", "%T").stdout.strip()
            if state in states and not listed:
                return state
            time.sleep(1.0)
        return self.job_state(job)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[Slurm]:
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        pytest.skip(f"Debian's slurm-wlm and munge are not installed ({', '.join(missing)} missing; "
                    "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs; these tests run as another user")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool", "log", "munge"):
        (root / d).mkdir()
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = root / "munge" / "munge.sock"
    host = socket.gethostname()
    cpus = os.cpu_count() or 2
    ctld_port, slurmd_port = _free_port(), _free_port()
    conf = root / "slurm.conf"
    conf.write_text(f"""ClusterName=sweeptest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={sock}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=60
MinJobAge=600
PlugStackConfig={root}/plugstack.conf
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    (root / "plugstack.conf").write_text("")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs = [subprocess.Popen([_which("munged"), "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
                               f"--seed-file={root}/munge/munged.seed"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    time.sleep(0.5)
    procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    time.sleep(1.0)
    procs.append(subprocess.Popen([_which("slurmd"), "-D", "-f", str(conf), "-N", host], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    cluster = Slurm(root, conf, env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            out = cluster.run(_which("sinfo"), "-h", "-o", "%T").stdout.strip()
            if out == "idle":
                break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.5)
        else:
            out = ""
        if out != "idle":
            logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-1500:] for p in sorted((root / "log").glob("*.log")))
            pytest.fail(f"the test Slurm did not come up (sinfo: {out!r}){logs}")
        yield cluster
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
