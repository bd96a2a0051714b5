"""A local Ray instance that goes when its driver goes, even after ``kill -9``.

Ray ties the head processes it starts (GCS, raylet) to the driver with ``PR_SET_PDEATHSIG``,
and the raylet's workers follow the raylet within seconds. Its dashboard and runtime-env
agents also see the raylet die, but then spend 60 s trying to report that to the dead GCS
before they exit. So before starting a local instance the driver marks the environment every
Ray process inherits with a fresh token, and starts this watcher holding the read end of a
pipe. The kernel closes the pipe when the driver exits, however it exits; the watcher then
kills every process that carries the token (a caption actor included, so nothing keeps
calling the model servers) and exits. It never touches another Ray instance on the machine.

Run as ``python -m refsav_pipeline.pipeline.lifeline TOKEN``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ENV_VAR = "REFSAV_RAY_LIFELINE"


class Lifeline:
    """The driver's end: start before ``ray.init``, ``release`` after ``ray.shutdown``."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, self.token],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        os.environ[ENV_VAR] = self.token

    def release(self) -> None:
        """Normal end: the watcher sweeps whatever is left (usually nothing) and exits."""
        os.environ.pop(ENV_VAR, None)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def marked_processes(token: str) -> list[int]:
    """Live processes whose environment carries ``token`` (ours excepted)."""
    needle = f"{ENV_VAR}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, a zombie, or not ours to read
            continue
    return pids


def sweep(token: str, rounds: int = 20) -> None:
    """SIGKILL every marked process, again until none is left (one may fork as we go)."""
    for _ in range(rounds):
        pids = marked_processes(token)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def main() -> None:
    token = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    while sys.stdin.buffer.read(4096):
        pass  # the driver never writes; EOF means it has exited or let go
    sweep(token)


if __name__ == "__main__":
    main()
