"""A local Ray instance that goes when its driver goes, even after ``kill -9``.

Ray ties the head processes it starts (GCS, raylet) to the driver with ``PR_SET_PDEATHSIG``,
and the raylet's workers follow the raylet within seconds. Its dashboard and runtime-env
agents also see the raylet die, but then spend 60 s trying to report that to the dead GCS
before they exit. So before starting a local instance the driver starts this watcher holding
the read end of a pipe, and marks the environment every Ray process inherits with a fresh
token; once Ray is up it also tells the watcher the session folder. The kernel closes the
pipe when the driver exits, however it exits; the watcher then kills every process that
carries the token or holds a file in the session folder (the agents rewrite their
environment area for their process titles, but keep their logs open there), a caption actor
included, so nothing keeps calling the model servers. It never touches another Ray instance.

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

import psutil

ENV_VAR = "REFSAV_RAY_LIFELINE"


class Lifeline:
    """The driver's end: start before ``ray.init``, ``release`` after ``ray.shutdown``."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, self.token],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        os.environ[ENV_VAR] = self.token

    def watch(self, session_dir: str) -> None:
        """Also sweep the processes that hold files in Ray's ``session_dir``."""
        if self.proc.stdin is not None:
            self.proc.stdin.write(session_dir.encode() + b"\n")
            self.proc.stdin.flush()

    def release(self) -> None:
        """Normal end: the watcher sweeps whatever is left (usually nothing) and exits."""
        os.environ.pop(ENV_VAR, None)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _holds_file_under(proc: psutil.Process, prefixes: list[str]) -> bool:
    paths = [proc.cwd(), *(f.path for f in proc.open_files())]
    return any(path.startswith(prefix) for path in paths for prefix in prefixes)


def marked_processes(token: str, session_dirs: list[str],
                     spare: frozenset[int] = frozenset()) -> list[int]:
    """Live processes whose environment carries ``token`` or that hold a file in one of
    ``session_dirs``; never this process or those in ``spare``."""
    spare = spare | {os.getpid()}
    prefixes = [d.rstrip("/") + "/" for d in session_dirs]
    pids = []
    for proc in psutil.process_iter():
        if proc.pid in spare:
            continue
        try:
            if proc.environ().get(ENV_VAR) == token or (
                    prefixes and _holds_file_under(proc, prefixes)):
                pids.append(proc.pid)
        except (psutil.Error, OSError):  # gone, a zombie, or not ours to read
            continue
    return pids


def sweep(token: str, session_dirs: list[str], spare: frozenset[int], rounds: int = 20) -> None:
    """SIGKILL every marked process, again until none is left (one may fork as we go)."""
    for _ in range(rounds):
        pids = marked_processes(token, session_dirs, spare)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def main() -> None:
    token = sys.argv[1]
    driver = os.getppid()  # on a normal end it still runs, with Ray's log files open
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    # The driver writes only the session folder; EOF means it has exited or let go.
    session_dirs = [line.decode().strip() for line in sys.stdin.buffer]
    sweep(token, [d for d in session_dirs if os.path.isabs(d) and "session_" in d],
          spare=frozenset({driver}))


if __name__ == "__main__":
    main()
