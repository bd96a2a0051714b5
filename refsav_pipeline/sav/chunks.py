"""SA-V chunks: the ``sav_0XX`` tarballs a video was shipped in.

The published Ref-SAV benchmark takes its videos from chunks that training never sees, so the
chunk, not only the video, is the unit a user holds out. A video's chunk is the folder it sits
in (``sav_train/sav_055/sav_055123.mp4`` is in ``sav_055``).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

_CHUNK = re.compile(r"^(?P<prefix>[A-Za-z_]*?)(?P<number>\d+)$")


def chunk_of(video_path: str) -> str | None:
    """The chunk folder of a path relative to the SA-V root; ``None`` for a flat layout."""
    parent = PurePosixPath(video_path).parent.name
    return parent if parent and _CHUNK.match(parent) else None


def parse_chunks(spec: str) -> list[str]:
    """``"sav_055-sav_056,sav_010"`` → ``["sav_010", "sav_055", "sav_056"]``.

    Items are separated by commas; ``A-B`` is every chunk from A to B inclusive (same prefix and
    digit width, A ≤ B). Raises ``ValueError`` naming the item that is not a chunk.
    """
    chunks: set[str] = set()
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        first, sep, last = item.partition("-")
        a = _CHUNK.match(first.strip())
        b = _CHUNK.match(last.strip()) if sep else a
        if a is None or b is None:
            raise ValueError(f"{item!r} is not a chunk name like sav_055 or a range like "
                             "sav_055-sav_056")
        width = len(a["number"])
        if (a["prefix"], width) != (b["prefix"], len(b["number"])) \
                or int(a["number"]) > int(b["number"]):
            raise ValueError(f"{item!r}: a range runs from the lower to the higher chunk of "
                             "one series, like sav_055-sav_056")
        chunks.update(f"{a['prefix']}{n:0{width}d}"
                      for n in range(int(a["number"]), int(b["number"]) + 1))
    if not chunks:
        raise ValueError(f"{spec!r} names no chunk")
    return sorted(chunks)


def format_chunks(chunks: list[str]) -> str:
    """The inverse of ``parse_chunks``: ``["sav_000", "sav_001", "sav_002", "sav_010"]`` →
    ``"sav_000-sav_002,sav_010"`` (consecutive chunks of one series as a range)."""
    keyed = sorted({(m["prefix"], len(m["number"]), int(m["number"])): c
                    for c in chunks if (m := _CHUNK.match(c))}.items())
    ranges: list[list[str]] = []
    last: tuple[str, int, int] | None = None
    for (prefix, width, number), name in keyed:
        if last == (prefix, width, number - 1):
            ranges[-1][1] = name
        else:
            ranges.append([name, name])
        last = (prefix, width, number)
    return ",".join(a if a == b else f"{a}-{b}" for a, b in ranges)
