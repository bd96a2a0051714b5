"""SIGINT and SIGTERM during ``refsav run``/``resume``/``demo``: a clean stop, one line, an exit
code that says which signal.

Ctrl-C, ``kill``, Slurm's SIGTERM at the time limit and the Slurm job's own stop (it sends
SIGINT to the driver) all end the same way: finished shards are kept, nothing in flight is
written, the caption actors and Ray are shut down, and the command prints one
``interrupted: …`` line with the command that continues, then exits 128 + the signal's number
(130 for SIGINT, 143 for SIGTERM), as shells do.

While the run loop is running, the first signal only sets a flag that the loop checks, so the
stop happens at a known point of the loop, never inside a library call; a second signal
interrupts at once. Elsewhere (preflight, starting Ray, closing) a signal interrupts at once.
Ray installs its own SIGTERM handler when it starts (it dumps a C++ stack), so ``reassert``
puts ours back after ``ray.init``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The command was asked to stop by a signal (a BaseException, like KeyboardInterrupt, so
    no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.active = False
        self.watched = False  # the run loop checks ``stop`` itself
        self.stop = threading.Event()
        self.signum = signal.SIGINT.value
        self.previous: dict[int, Any] = {}


_STATE = _State()


def _on_signal(signum: int, frame: Any) -> None:
    first = not _STATE.stop.is_set()
    _STATE.stop.set()
    if first:
        _STATE.signum = signum
    if not (_STATE.watched and first):
        raise Interrupted(_STATE.signum)


def reassert() -> None:
    """Install our handlers again (after a library replaced them), if a command holds them."""
    if _STATE.active and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _on_signal)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` (or set the run loop's flag) in the block."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread's handlers
        return
    _STATE.active, _STATE.watched = True, False
    _STATE.stop.clear()
    for sig in SIGNALS:
        _STATE.previous[sig] = signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        _STATE.active = False
        for sig in SIGNALS:
            prev = _STATE.previous.pop(sig, None)
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """For the run loop: the first signal sets the yielded flag instead of raising; the loop
    raises ``stopped()`` when it sees it. Outside ``stop_on_signals`` (tests calling the
    runner directly), SIGINT alone is handled, the same way."""
    own = not _STATE.active and threading.current_thread() is threading.main_thread()
    previous = None
    if own:
        _STATE.stop.clear()
        previous = signal.signal(signal.SIGINT, _on_signal)
    was, _STATE.watched = _STATE.watched, True
    try:
        yield _STATE.stop
    finally:
        _STATE.watched = was
        if own:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def stopped() -> Interrupted:
    """The exception for the signal that set the flag."""
    return Interrupted(_STATE.signum)
