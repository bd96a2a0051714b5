"""The reference server's bad mode: a model that answers badly on purpose, as real ones do.

InternVL2-76B answers a few calls in a thousand with nothing, a cut-off text, a refusal, a
runaway or a loop, another language, or words about the yellow marks it was shown; it can also
give every object of a video the same caption. ``bad_answer_rate`` of the requests get one of
``bad_answers`` (each only where it fits: a leak on images with marks, the same caption on video
requests). Which request and which kind is a hash of the server's seed and the request's
content, so a run against the server is deterministic, and a retried request that differs
(another seed, a note in the prompt) gets a new draw, as a real model would answer it anew.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from refsav_pipeline.reference.config import BAD_ANSWER_KINDS, BadAnswerKind

SAME_VIDEO_CAPTION = ("A person walks slowly from one side of the room to the other and stops "
                      "near the window, looking outside.")
"""What every video request drawn ``same_video_caption`` is answered: the same for every object
of every video, so no object of a video can be told from another by it."""

NOT_ENGLISH = "这是一个红色的物体，位于画面的中央，形状呈圆形。"
REFUSAL = "I'm sorry, but I can't identify the object in this image."
LOOP = "The object moves to the left."

_FITS: dict[BadAnswerKind, frozenset[str]] = {
    "prompt_leak": frozenset({"scene", "video"}),
    "same_video_caption": frozenset({"video"}),
}
"""Kinds that fit only some calls (by the server's name for the call); the others fit all."""


def draw(seed: int, rate: float, kinds: Sequence[BadAnswerKind], call: str, text: str,
         sampling_seed: Any, images: Sequence[bytes]) -> BadAnswerKind | None:
    """The bad kind this request gets, or None: a pure function of seed and request."""
    if rate <= 0:
        return None
    fitting = [k for k in kinds if call in _FITS.get(k, {call})]
    if not fitting:
        return None
    h = hashlib.sha256(f"{seed}\0{call}\0{sampling_seed}\0{text}".encode())
    for img in images:
        h.update(img)
    digest = h.digest()
    if int.from_bytes(digest[:8], "big") / 2**64 >= rate:
        return None
    return fitting[int.from_bytes(digest[8:16], "big") % len(fitting)]


def _leak(call: str, good: str) -> str:
    if call == "scene":
        return f"The object outlined in yellow stands out. {good}"
    return f"The object in the yellow box is the one to follow. {good}"


def _runaway(good: str) -> str:
    """About 100 KB of varied English: the length is the defect, not a loop."""
    return " ".join(f"{good} Detail {i} of the surface shows a slightly different shade."
                    for i in range(1200))


def bad_text(kind: BadAnswerKind, call: str, good: str) -> tuple[str | None, str]:
    """(content, finish_reason) of a caption answer of this kind, from the good answer."""
    if kind == "null":
        return None, "stop"
    if kind == "empty":
        return " \n", "stop"
    if kind == "truncated":
        return good[: max(1, len(good) // 2)], "length"
    if kind == "refusal":
        return REFUSAL, "stop"
    if kind == "runaway":
        return _runaway(good), "stop"
    if kind == "repetition":
        return " ".join([good, *[LOOP] * 8]), "stop"
    if kind == "prompt_leak":
        return _leak(call, good), "stop"
    if kind == "not_english":
        return NOT_ENGLISH, "stop"
    return SAME_VIDEO_CAPTION, "stop"


def bad_verdict(kind: BadAnswerKind, verdict: dict[str, Any]) -> tuple[str | None, str]:
    """(content, finish_reason) of a judge answer of this kind: valid JSON whose description
    is bad, where the kind is about what is said."""
    good = json.dumps(verdict)
    if kind in ("null", "empty", "truncated"):
        return bad_text(kind, "judge", good)
    description = {"refusal": REFUSAL, "runaway": _runaway(verdict["description"] or "x"),
                   "repetition": " ".join([LOOP] * 10), "not_english": NOT_ENGLISH}[kind]
    return json.dumps({**verdict, "consistent": True, "description": description}), "stop"


__all__ = ["BAD_ANSWER_KINDS", "SAME_VIDEO_CAPTION", "bad_text", "bad_verdict", "draw"]
