"""The three ways something goes wrong, each handled in one place.

- ``RecordError``: one record (a video or a masklet) is bad; it becomes a row and the run goes on.
- ``InputError``: the user asked for something wrong; the command stops before writing anything.
- ``RunStopped``: the run as a whole cannot go on (outage, disk); nothing in flight is marked.

A ``RecordError`` carries a short machine-readable ``kind`` (counted by ``refsav status``) and a
message that names the video and, where known, the masklet, so a failed row explains itself.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


class RecordError(Exception):
    """A problem with one input record; the caller marks that record failed and goes on."""

    def __init__(self, kind: str, message: str, *, video_id: str | None = None,
                 masklet_id: int | None = None) -> None:
        where = ""
        if video_id is not None:
            where = f"video {video_id}"
            if masklet_id is not None:
                where += f" masklet {masklet_id}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.kind = kind
        self.video_id = video_id
        self.masklet_id = masklet_id


class InputError(Exception):
    """A mistake in what the user asked for (a wrong path, a folder that is not a run, no model
    server): the command stops before writing anything. The message says what to do instead.
    """


class RunStopped(Exception):
    """The run as a whole cannot go on (no model answers, the output cannot be written).

    Never a row: the run stops without marking what was in flight, so ``refsav resume`` redoes
    exactly that once the cause is gone. Takes only a message, so it pickles across Ray.
    """


class OutputUnwritable(RunStopped):
    """Writing under the output folder failed (disk full, read-only, no permission)."""

    @classmethod
    def from_os_error(cls, folder: str | os.PathLike[str], err: OSError) -> OutputUnwritable:
        cause = err.strerror or str(err)
        return cls(f"cannot write to {folder}: {cause}"
                   + (f" (errno {err.errno})" if err.errno else ""))


_SQLITE_DISK_ERRORS = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")


@contextmanager
def writing_under(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failed write under ``folder`` (``OSError``, or SQLite's disk full / read-only /
    I/O error) into ``OutputUnwritable``."""
    try:
        yield
    except OSError as err:
        raise OutputUnwritable.from_os_error(folder, err) from err
    except sqlite3.Error as err:
        name = str(getattr(err, "sqlite_errorname", ""))
        if not name.startswith(_SQLITE_DISK_ERRORS):
            raise
        cause = f"SQLite: {err}"
        if name == "SQLITE_FULL":
            cause = f"{os.strerror(errno.ENOSPC)} ({cause})"
        raise OutputUnwritable(f"cannot write to {folder}: {cause}") from err
