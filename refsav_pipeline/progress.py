"""Progress for the long loops outside the Ray run (exports, reports): on stderr, gone when done."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")
_stderr = Console(stderr=True)


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    yield from track(items, description=description, total=total, console=_stderr,
                     transient=True)
