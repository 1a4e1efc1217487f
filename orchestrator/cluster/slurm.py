"""Sweeps on a Slurm allocation (``sweep slurm``): one batch script that starts Ray on the job's nodes (the head on
the first, ``srun`` workers on the others, following Ray's documented Slurm pattern), runs ``sweep run`` against it,
assembles the ensemble and stops Ray; its submission with ``sbatch``; and the job's time left, which is the
sweep's default time budget inside a job (:func:`slurm_budget`).

Two jobs on one node do not collide: each job's Ray listens on its own block of 100 ports derived from the job id,
keeps its files under ``/tmp/ray-JOBID`` and is stopped by ending its own ``srun`` steps (never ``ray stop``,
which would stop every Ray of the user on the node). ``RAY_AUTH_MODE=token`` with the token in
``~/.ray/auth_token`` (the shared home) keeps other users of the nodes out.

Stopping: the batch shell is sent ``SIGTERM`` ``signal_lead`` seconds before the time limit (``--signal``) and
forwards it to the driver; ``scancel`` and preemption send it to every process of the job. The driver stops like
Ctrl-C (its runs marked ``interrupted``, Tune's state saved); a requeued job (``--requeue``) or a new
``sweep slurm SPEC --resume`` continues the same sweep.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from pydantic import Field, field_validator

from schnet_model.config import StrictModel

MARGIN_SECONDS = 180.0
"""Seconds of a job kept after the sweep's budget: the trials' finalisation, the ensemble's assembly, Ray's stop."""
PORT_BASE, PORT_BLOCKS = 20000, 400  # a job's Ray ports: PORT_BASE + (job id mod PORT_BLOCKS) × 100, the next 100


class SlurmError(RuntimeError):
    """``sbatch``/``squeue`` missing or refusing; one line."""


def parse_duration(text: str) -> float | None:
    """Seconds of a Slurm duration (``[D-]HH:MM:SS``, ``MM:SS``, ``MM``); None for ``UNLIMITED``/``NOT_SET``.

    >>> parse_duration("1-02:00:30"), parse_duration("05:00"), parse_duration("UNLIMITED")
    (93630.0, 300.0, None)
    """
    text = text.strip()
    if text.upper() in ("UNLIMITED", "NOT_SET", "INFINITE", "INVALID", ""):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if m is None:
        raise ValueError(f"{text!r}: expected a Slurm time, [D-]HH:MM:SS")
    days, a, b, c = m.groups()
    if c is not None:
        h, mi, s = int(a), int(b), int(c)
    elif b is not None:
        h, mi, s = (int(a), int(b), 0) if days else (0, int(a), int(b))
    else:
        h, mi, s = (int(a), 0, 0) if days else (0, int(a), 0)
    return float(((int(days or 0) * 24 + h) * 60 + mi) * 60 + s)


def job_time_left(job_id: str) -> float | None:
    """Seconds left before job ``job_id`` reaches its time limit (``squeue``); None without a limit or a Slurm."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        out = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    try:
        return parse_duration(out.stdout.strip().splitlines()[0])
    except ValueError:
        return None


def slurm_budget(environ: dict[str, str] | None = None) -> tuple[float, str] | None:
    """Inside a Slurm job with a time limit: the sweep's default time budget (the time left minus
    :data:`MARGIN_SECONDS`) and a line saying so; None outside a job, or in a job without a limit."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    left = job_time_left(job)
    if left is None:
        return None
    budget = max(60.0, left - MARGIN_SECONDS)
    return budget, (f"time budget: {budget:.0f} s, the Slurm job {job}'s time left ({left:.0f} s) less "
                    f"{MARGIN_SECONDS:.0f} s for finalising and the ensemble (set search.time_budget to choose)")


class SlurmOptions(StrictModel):
    """What ``sweep slurm`` asks Slurm for."""

    nodes: int = Field(1, ge=1, description="nodes of the allocation: Ray's head on the first, workers on the rest")
    cpus_per_node: int = Field(8, ge=1, description="CPUs per node (Slurm --cpus-per-task, one Ray node per node)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (Slurm --gpus-per-node)")
    time: str = Field("04:00:00", description="the job's time limit, [D-]HH:MM:SS (the sweep's budget within it)")
    partition: str | None = None
    account: str | None = None
    requeue: bool = Field(False, description="Slurm may requeue the job (preemption, node failure): it resumes")
    signal_lead: int = Field(300, ge=30, description="seconds before the time limit the sweep is told to stop")

    @field_validator("time")
    @classmethod
    def _time(cls, v: str) -> str:
        try:
            seconds = parse_duration(v)
        except ValueError:
            seconds = None
        if not seconds:
            raise ValueError("expected a time limit, [D-]HH:MM:SS")
        return v

    @field_validator("partition", "account")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.,:+-]+", v):
            raise ValueError("expected a Slurm name (letters, digits, _ . , : + -)")
        return v


def render_script(spec_path: Path, opts: SlurmOptions, *, name: str, sets: list[str], workdir: Path, storage: Path,
                  tracking_uri: str, log_dir: Path, python: str | None = None) -> str:
    """The batch script: Ray on the allocation, ``sweep run`` (``--resume`` once the sweep exists: a requeued or
    resubmitted job continues it), the ensemble, Ray stopped. Every path is absolute: the compute nodes see them on
    the shared filesystem."""
    python = python or sys.executable
    q = shlex.quote
    sbatch = [f"--job-name=sweep-{name}", f"--nodes={opts.nodes}", "--ntasks-per-node=1",
              f"--cpus-per-task={opts.cpus_per_node}", f"--time={opts.time}",
              f"--output={log_dir}/%x-%j.out", "--open-mode=append", f"--signal=B:TERM@{opts.signal_lead}",
              "--requeue" if opts.requeue else "--no-requeue"]
    if opts.gpus_per_node:
        sbatch.append(f"--gpus-per-node={opts.gpus_per_node}")
    if opts.partition:
        sbatch.append(f"--partition={opts.partition}")
    if opts.account:
        sbatch.append(f"--account={opts.account}")
    header = "\n".join(f"#SBATCH {s}" for s in sbatch)
    run_args = " ".join(q(a) for a in ["run", str(spec_path), "--name", name,
                                         *[x for s in sets for x in ("--set", s)]])
    return f"""#!/bin/bash
# Written by `sweep slurm` on {datetime.now():%Y-%m-%d %H:%M}: the sweep {name} of {spec_path}.
# Submitted again (sbatch THIS_FILE), or requeued by Slurm, it continues the sweep where it stopped.
{header}
set -uo pipefail
cd {q(str(workdir))}
export PATH={q(str(Path(python).parent))}:"$PATH"
export RAY_AUTH_MODE=token  # the token in ~/.ray/auth_token (sweep slurm made it; the home is shared)
export PYTHONUNBUFFERED=1  # the log has every line, even of a driver killed at the end of KillWait
sweep=({q(python)} -m orchestrator.cli)

port=$(( {PORT_BASE} + (SLURM_JOB_ID % {PORT_BLOCKS}) * 100 ))  # this job's Ray ports: $port ... $port+99
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
# the batch script runs on the first node; its address as Ray finds it (not /etc/hosts' 127.0.1.1)
head_ip=$({q(python)} -c "import ray._private.services as s; print(s.get_node_ip_address())")
gpus=${{SLURM_GPUS_ON_NODE:-0}}
ports=(--node-manager-port=$((port + 1)) --object-manager-port=$((port + 2))
       --dashboard-agent-listen-port=$((port + 4)) --dashboard-agent-grpc-port=$((port + 5))
       --metrics-export-port=$((port + 6)) --runtime-env-agent-port=$((port + 7))
       --min-worker-port=$((port + 10)) --max-worker-port=$((port + 99)))
echo "sweep: Ray head ${{nodes[0]}} ($head_ip:$port), ${{#nodes[@]}} node(s) of $SLURM_CPUS_PER_TASK CPUs, $gpus GPUs"
srun --nodes=1 --ntasks=1 -w "${{nodes[0]}}" ray start --head --block --node-ip-address="$head_ip" --port=$port \\
  --include-dashboard=false --temp-dir=/tmp/ray-$SLURM_JOB_ID --num-cpus=$SLURM_CPUS_PER_TASK --num-gpus=$gpus \\
  "${{ports[@]}}" &
steps=($!)
for i in $(seq 90); do ray status --address="$head_ip:$port" >/dev/null 2>&1 && break; sleep 2; done
for node in "${{nodes[@]:1}}"; do
  srun --nodes=1 --ntasks=1 -w "$node" ray start --block --address="$head_ip:$port" \\
    --num-cpus=$SLURM_CPUS_PER_TASK --num-gpus=$gpus "${{ports[@]}}" &
  steps+=($!)
done
# a second signal makes srun end its step at once (the first only forwards it: Ray would drain for 30 s)
stop_ray() {{ kill -TERM "${{steps[@]}}" 2>/dev/null; sleep 1; kill -TERM "${{steps[@]}}" 2>/dev/null; wait; }}

args=({run_args} --address "$head_ip:$port")
if [ -f {q(str(storage / name / "sweep.json"))} ]; then args+=(--resume); fi  # requeued or resubmitted
"${{sweep[@]}}" "${{args[@]}}" &
driver=$!
trap 'echo "sweep: stop signal: the sweep saves its state (to continue: sbatch this file)"; kill -TERM $driver' TERM
rc=0
while kill -0 $driver 2>/dev/null; do wait $driver; rc=$?; done  # wait returns early when the trap runs
if [ $rc -eq 0 ]; then
  "${{sweep[@]}}" ensemble {q(name)} --tracking-uri {q(tracking_uri)}; rc=$?
fi
stop_ray
exit $rc
"""


def ensure_ray_token() -> Path:
    """``~/.ray/auth_token``, made (mode 0600) when missing: the Ray cluster of every job of this user uses it."""
    path = Path.home() / ".ray" / "auth_token"
    if not path.is_file():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def submit(script: Path) -> str:
    """``sbatch`` the script; the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("sbatch not found: run sweep slurm on a Slurm login node (or pass --dry-run to see the "
                         "script)")
    try:
        out = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SlurmError("sbatch did not answer within 60 s") from None
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
        raise SlurmError(f"sbatch refused {script}: {lines[-1] if lines else f'exit {out.returncode}'}")
    return out.stdout.strip().split(";")[0]


__all__ = ["MARGIN_SECONDS", "SlurmError", "SlurmOptions", "ensure_ray_token", "job_time_left", "parse_duration",
           "render_script", "slurm_budget", "submit"]
