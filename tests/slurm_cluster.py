"""A real Slurm on this machine for the tests: munged, slurmctld and slurmd from Debian's packages.

Everything lives under one temporary folder: the munge key and socket, ``slurm.conf`` (this
machine's CPUs from ``slurmd -C``, no GPUs), state, spool, logs and the job completion log the
tests read job states from. With ``nodes > 1``, that many slurmd run side by side on this
machine (Debian builds Slurm with multiple-slurmd support), each a node of its own, so a job
can span several nodes and use ``srun -w <node>`` as on a real cluster. Nothing of the
system's own Slurm or munge setup is used or touched. ``scripts/setup-slurm`` installs the
packages; if a daemon cannot start, the fixture fails with its log.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from refsav_pipeline.pipeline.cli import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "sinfo", "squeue", "scancel")


@dataclass(frozen=True)
class JobEnd:
    """One line of the job completion log: how a job ended."""

    job_id: int
    state: str  # COMPLETED, FAILED, TIMEOUT, CANCELLED, NODE_FAIL, ...
    exit_code: int


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"({path} missing)"


def _node_line() -> str:
    """This machine as ``slurmd -C`` sees it (name, CPUs, memory), for the NodeName line."""
    res = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if res.returncode != 0 or line is None:
        pytest.fail(f"`slurmd -C` failed ({res.returncode}): {res.stdout}{res.stderr}")
    return re.sub(r"\s*UpTime=\S+", "", line)


class SlurmCluster:
    """munged + slurmctld + slurmd as children of the test process, configured in ``root``."""

    def __init__(self, root: Path, nodes: int = 1) -> None:
        self.root = root
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.cpus_per_node = 0
        self.conf = root / "slurm.conf"
        self.jobcomp = root / "jobcomp.txt"
        self.logs = root / "log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.jobs: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for client commands and jobs: this cluster's config, the venv first."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    # -- setup ------------------------------------------------------------------------------

    def _write_config(self) -> None:
        node = _node_line()
        host = re.match(r"NodeName=(\S+)", node).group(1)  # type: ignore[union-attr]
        hardware = node.split(None, 1)[1]  # CPUs=… Boards=… RealMemory=…
        self.cpus_per_node = int(re.search(r"\bCPUs=(\d+)", hardware).group(1))  # type: ignore[union-attr]
        r = self.root
        self.conf.write_text("\n".join([
            "ClusterName=refsavtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r}/munge/munge.socket",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.logs}/slurmctld.log",
            f"SlurmdLogFile={self.logs}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",  # no cgroups needed in a container
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "MpiDefault=none",
            "ReturnToService=2",
            "MinJobAge=3600",
            "KillWait=10",
            "OverTimeLimit=0",
            "MailProg=/bin/true",
            "SlurmdParameters=config_overrides",
            *(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} "
              f"{hardware} State=UNKNOWN" for name in self.nodes),
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.logs / f"{name}.out", "wb")  # noqa: SIM115 (owned by the child)
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True)

    def _fail(self, what: str) -> None:
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.logs.iterdir()))
        pytest.fail(f"Slurm test cluster: {what}\n{logs}")

    def start(self) -> None:
        missing = [c for c in (*DAEMONS, *CLIENTS, "mungekey") if shutil.which(c) is None]
        if missing:
            pytest.fail(f"Slurm/munge commands missing: {missing}; run `bash scripts/setup-slurm`")
        for d in ("munge", "state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for d in (self.root, self.root / "munge"):
            d.chmod(0o755)  # munged checks that the socket's folders are not writable by others
        key = self.root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, timeout=30)
        key.chmod(0o600)
        m = self.root / "munge"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                               f"--socket={m}/munge.socket", f"--pid-file={m}/munged.pid",
                               f"--seed-file={m}/munged.seed",
                               f"--log-file={self.logs}/munged.log"])
        self._wait_for(lambda: (m / "munge.socket").exists(), 30, "munged did not start")
        self._write_config()
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait_for(lambda: "is UP" in self.client("scontrol", "ping").stdout, 60,
                       "slurmctld did not answer `scontrol ping`")
        for name in self.nodes:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
            self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-f", str(self.conf), "-N", name])
        self._wait_for(lambda: self.client("sinfo", "-h", "-N", "-o", "%T").stdout.split()
                       == ["idle"] * len(self.nodes), 90, "the nodes did not become idle")

    def _wait_for(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                self._fail(f"{', '.join(dead)} exited ({what})")
            if time.monotonic() > deadline:
                self._fail(what)
            time.sleep(0.5)

    def client(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (sinfo, scontrol, ...) against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                              timeout=60)

    def stop(self) -> None:
        for job in self.jobs:
            self.client("scancel", str(job))
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)

    # -- jobs -------------------------------------------------------------------------------

    def sbatch(self, script: Path, *args: str, options: tuple[str, ...] = ()) -> int:
        """Submit ``script args`` with sbatch ``options``; its output goes to job-<id>.out."""
        res = self.client("sbatch", "--parsable", f"--output={self.root}/job-%j.out",
                        f"--chdir={self.root}", *options, str(script), *args)
        if res.returncode != 0:
            self._fail(f"sbatch failed: {res.stderr}")
        job = int(res.stdout.strip().split(";")[0])
        self.jobs.append(job)
        return job

    def job_log(self, job: int) -> str:
        return _tail(self.root / f"job-{job}.out", 20000)

    def ended(self, job: int) -> JobEnd | None:
        if not self.jobcomp.exists():
            return None
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("JobId") == str(job):
                return JobEnd(job, fields["JobState"], int(fields["ExitCode"].split(":")[0]))
        return None

    def wait(self, job: int, timeout_s: float = 600) -> JobEnd:
        """Block until the job has ended; fail with its log if it takes longer."""
        deadline = time.monotonic() + timeout_s
        while (end := self.ended(job)) is None:
            if time.monotonic() > deadline:
                self._fail(f"job {job} still running after {timeout_s:.0f}s:\n"
                           f"{self.job_log(job)}")
            time.sleep(2)
        return end

    def elapsed_s(self, job: int) -> int:
        """Seconds the job has been running, as slurmctld counts them."""
        out = self.client("squeue", "-h", "-j", str(job), "-o", "%M").stdout.strip()
        parts = [int(x) for x in re.split(r"[-:]", out)] if out else [0]
        secs = 0
        for unit, value in zip((1, 60, 3600, 86400), reversed(parts), strict=False):
            secs += unit * value
        return secs

    def set_time_limit(self, job: int, minutes: int) -> None:
        res = self.client("scontrol", "update", f"JobId={job}", f"TimeLimit={minutes}")
        if res.returncode != 0:
            self._fail(f"scontrol update failed: {res.stderr}")


@contextmanager
def slurm_cluster(root: Path, nodes: int = 1) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(root, nodes)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
