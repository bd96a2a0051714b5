"""CPU accounting from ``/proc`` for the benchmarks (Linux): per process, per process tree."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / TICK


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
        errors="replace")


def descendants(root: int) -> list[int]:
    """Every living process below ``root`` (children, their children, …)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(_stat(int(d))[1])
            except (OSError, IndexError):
                continue
    out, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """``pid -> (command line, CPU seconds)`` for every process below ``root``."""
    out = {}
    for pid in descendants(root):
        try:
            out[pid] = (cmdline(pid), cpu_of(pid))
        except OSError:
            continue
    return out


def server_pid() -> int:
    """The reference server: our child process running ``serve reference``."""
    me = os.getpid()
    for pid in descendants(me):
        try:
            if int(_stat(pid)[1]) == me and "reference" in cmdline(pid):
                return pid
        except OSError:
            continue
    raise RuntimeError("reference server process not found")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all cores so far (``/proc/stat``; every process counts)."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]  # idle + iowait
    return sum(f) - idle, sum(f)


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()
