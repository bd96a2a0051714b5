"""Expression length, counted one way for the run report and the dataset card, and the
published figure both compare it with."""

from __future__ import annotations

REFSAV_MEAN_WORDS = 83.6
"""Average expression length of the published Ref-SAV train set (Sa2VA paper), in words."""


def words(text: str | None) -> int:
    """Whitespace-separated words; 0 for a missing text."""
    return len(text.split()) if isinstance(text, str) else 0
