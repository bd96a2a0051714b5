"""How long each human or model text may be, checked on the server and again by the exporter.

Browser limits can be bypassed; a 32 MB caption must be refused where it is stored and where it
leaves for the benchmark, with a message that names the field and both lengths.
"""

from __future__ import annotations

MAX_CHARS: dict[str, int] = {
    "object_caption": 2000,
    "scene_caption": 4000,
    "video_caption": 4000,
    "short_expression": 200,
    "note": 1000,
    "reason": 200,
}

LABELS = {
    "object_caption": "object caption",
    "scene_caption": "scene caption",
    "video_caption": "video caption",
    "short_expression": "short expression",
    "note": "note",
    "reason": "reject reason",
}


def too_long(field: str, text: str | None) -> str | None:
    """The message for ``text`` in ``field`` if it is over the limit, else ``None``."""
    limit = MAX_CHARS[field]
    if text is not None and len(text) > limit:
        return (f"The {LABELS[field]} is {len(text):,} characters long; the limit is "
                f"{limit:,}. Shorten it and try again.")
    return None


def first_too_long(texts: dict[str, str | None]) -> str | None:
    """The first over-limit message among ``field -> text``, or ``None``."""
    for field, text in texts.items():
        msg = too_long(field, text)
        if msg:
            return msg
    return None
