"""A short expression for every training object, derived from its object-level caption.

Sa2VA's older Ref-SAV loader in ``mode='short'`` or ``'long_short'`` picks a random entry of an
object's ``short_caps`` and asks "Can you segment the {short} in this image?" (after dropping a
leading "A "), so each object needs at least one short noun phrase. People write short
expressions only for benchmark objects, whose videos never enter training; the pipeline makes
none. The first clause of the object caption (what the object is, its colour and shape) is
such a phrase: it is taken deterministically, with no model call, so the same run always gives
the same file.
"""

from __future__ import annotations

import re

MAX_WORDS = 12
"""Longer phrases are cut: Sa2VA's short questions expect a name, not a description."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
_LEAD_IN = re.compile(
    r"^(?:in (?:the|this) (?:image|crop|frame|picture),?\s+)?"
    r"(?:(?:the|this) (?:image|crop|frame|picture|photo|close-up) (?:shows|features|depicts|"
    r"contains|displays)|(?:the|this) object (?:is|appears to be)|this is|it is|there is|"
    r"there's|shown (?:here )?is)(?:\s+|$)",
    re.IGNORECASE)
_CLAUSE_END = re.compile(r"[,;:(]|\s(?:which|that|who|whose|while|where|and is|and has)\s",
                         re.IGNORECASE)


def derive_short(caption: str | None, fallback: str = "Object") -> str:
    """The first clause of ``caption`` without lead-ins like "The image shows", at most
    ``MAX_WORDS`` words, capitalised and without final punctuation; ``fallback`` if empty."""
    text = " ".join((caption or "").split())
    text = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(" .!?")
    text = _LEAD_IN.sub("", text)
    text = _CLAUSE_END.split(text, maxsplit=1)[0]
    words = text.split()[:MAX_WORDS]
    phrase = " ".join(words).strip(" .!?\"'")
    if not phrase:
        return fallback
    return phrase[0].upper() + phrase[1:]


def short_caps(object_caption: str | None, long_expression: str) -> list[str]:
    """``short_caps`` of a training object: one phrase from the object caption, else from the
    long expression; never empty."""
    for text in (object_caption, long_expression):
        phrase = derive_short(text, fallback="")
        if phrase:
            return [phrase]
    return ["Object"]
