"""One run per output folder: an exclusive lease on ``<out>``, safe on shared file systems.

Two ``refsav run``/``resume`` on the same ``--out`` would both make every model call (double GPU
cost) and race on the same shards. ``flock`` is not reliable on NFS or Lustre, so the lease is
a file, ``<out>/run.lease``, holding who has it (host, pid, command, since when) and a
heartbeat the holder rewrites every ``HEARTBEAT_S``:

- **Taking it** is atomic on those file systems: the record is written to a private file,
  then hard-linked to ``run.lease`` (``link`` fails if the name exists, on NFS too, where
  ``O_EXCL`` was not always honoured).
- **A held lease** is refused at once, naming its holder. It counts as held while its holder
  lives: on the same host, while its pid runs (with the same start time, so a reused pid does
  not count); from another host, while its heartbeat is younger than ``STALE_AFTER_S`` (far
  above clock skew between nodes).
- **A stale lease** (holder killed with ``kill -9``, node lost) is taken over: renamed to a
  private name, checked to be the stale one (if another taker got there first, its fresh lease
  is put back and we refuse), then removed, and the lease taken as above.
- **Readers** (``status``, ``report``) never take it; ``status`` reads it to know whether the
  run is alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from refsav_pipeline.errors import InputError, writing_under

log = logging.getLogger(__name__)

LEASE_FILE = "run.lease"
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_runs(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or _start_time(pid) in (None, start)


class LeaseInfo(BaseModel):
    """What ``run.lease`` records."""

    host: str
    pid: int
    pid_start: str | None = None
    command: str
    token: str
    started_at: float
    heartbeat_at: float

    def alive(self, now: float | None = None) -> bool:
        if self.host == socket.gethostname():
            return _pid_runs(self.pid, self.pid_start)
        return (now or time.time()) - self.heartbeat_at < STALE_AFTER_S

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started_at).strftime("%Y-%m-%d %H:%M:%S")
        beat = max(0.0, time.time() - self.heartbeat_at)
        return (f"`{self.command}` on host {self.host} (pid {self.pid}) since {since}, "
                f"last heartbeat {beat:.0f} s ago")


class LeaseHeld(InputError):
    """Another run holds the output folder."""


def read_lease(out_dir: str | Path) -> LeaseInfo | None:
    """The lease of ``out_dir``, or None if nobody holds it. A lease that cannot be read
    counts as a live one of an unknown holder until its file is ``STALE_AFTER_S`` old."""
    path = Path(out_dir) / LEASE_FILE
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        return LeaseInfo.model_validate_json(raw)
    except ValidationError:
        return LeaseInfo(host="(unreadable lease)", pid=0, command="refsav", token="",
                         started_at=mtime, heartbeat_at=mtime)


class RunLease:
    """The lease of one run: ``acquire``, heartbeat in a thread, ``release``."""

    def __init__(self, out_dir: str | Path, command: str) -> None:
        self.out = Path(out_dir)
        self.path = self.out / LEASE_FILE
        now = time.time()
        self.info = LeaseInfo(host=socket.gethostname(), pid=os.getpid(),
                              pid_start=_start_time(os.getpid()), command=command,
                              token=uuid.uuid4().hex, started_at=now, heartbeat_at=now)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _private(self, what: str) -> Path:
        return self.out / f".{LEASE_FILE}.{what}.{self.info.token}"

    def _write_private(self) -> Path:
        tmp = self._private("new")
        tmp.write_text(self.info.model_dump_json())
        return tmp

    def acquire(self) -> None:
        """Take the lease, or raise ``LeaseHeld`` naming its holder (``OutputUnwritable`` if
        the folder cannot be written)."""
        with writing_under(self.out):
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self._write_private()
            try:
                for _ in range(5):
                    try:
                        os.link(tmp, self.path)
                        break
                    except FileExistsError:
                        held = read_lease(self.out)
                        if held is None:
                            continue  # released meanwhile
                        if held.alive():
                            raise self._refusal(held) from None
                        log.warning("taking over the stale lease of %s", held.describe())
                        self._take_over(held)
                else:
                    raise LeaseHeld(f"{self.out} changes hands too fast to take its lease; "
                                    "is another run starting there?")
            finally:
                tmp.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="run-lease", daemon=True)
        self._thread.start()

    def _refusal(self, held: LeaseInfo) -> LeaseHeld:
        return LeaseHeld(
            f"{self.out} is in use by {held.describe()}: one run per output folder. Wait for "
            f"it to end (`refsav status --out {self.out}` shows its progress), or stop it; a "
            f"run killed without warning leaves a lease that is taken over once stale "
            f"({STALE_AFTER_S:g} s without heartbeat, or at once on the same host)")

    def _take_over(self, held: LeaseInfo) -> None:
        grave = self._private("stale")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # someone else removed it: try again
        try:
            moved = read_lease_file(grave)
            if moved is not None and moved.token != held.token:
                # Another taker replaced the stale lease between our read and our rename:
                # that fresh lease is theirs. Put it back and give way.
                with contextlib.suppress(FileExistsError):
                    os.link(grave, self.path)
                raise self._refusal(moved)
        finally:
            grave.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = read_lease(self.out)
                if held is None or held.token != self.info.token:
                    self.lost = True
                    log.error("the lease of %s was taken by %s", self.out,
                              held.describe() if held else "nobody (removed)")
                    return
                self.info = self.info.model_copy(update={"heartbeat_at": time.time()})
                os.replace(self._write_private(), self.path)
            except OSError as exc:  # a file system hiccup: try again at the next beat
                log.warning("cannot renew the lease of %s: %s", self.out, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            held = read_lease(self.out)
            if held is not None and held.token == self.info.token:
                self.path.unlink()


def read_lease_file(path: Path) -> LeaseInfo | None:
    try:
        return LeaseInfo.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError):
        return None


@contextlib.contextmanager
def run_lease(out_dir: str | Path, command: str) -> Iterator[RunLease]:
    """Hold the lease of ``out_dir`` for the block (see the module's docstring)."""
    lease = RunLease(out_dir, command)
    lease.acquire()
    try:
        yield lease
    finally:
        lease.release()
