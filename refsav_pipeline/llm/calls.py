"""The four Ref-SAV model calls, as plain async functions over a ``ModelSession``.

Images arrive JPEG-encoded by the pipeline. Each function returns pydantic results carrying
text, model id, prompt id/version, usage, latency and whether the answer came from cache, and
raises ``RecordError`` subclasses (see ``llm.errors``) labelled with the video/masklet given.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from pydantic import ValidationError

from refsav_pipeline.errors import RecordError
from refsav_pipeline.llm.errors import with_where
from refsav_pipeline.llm.results import CallResult, JudgeResult, JudgeVerdict, ObjectDescriptions
from refsav_pipeline.llm.session import ModelSession

JUDGE_RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "judge_verdict", "schema": JudgeVerdict.model_json_schema(),
                    "strict": True},
}


def parse_verdict(text: str) -> JudgeVerdict:
    """Strict JSON → JudgeVerdict; tolerates a fenced block (```json … ```) around it.

    Raises ValueError (the client's signal to ask again) on anything else.
    """
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`")
        s = s[4:] if s.startswith("json") else s
    try:
        return JudgeVerdict.model_validate(json.loads(s))
    except (json.JSONDecodeError, ValidationError) as e:
        raise ValueError(f"not a judge verdict: {e.__class__.__name__}") from e


def verdict_texts(v: JudgeVerdict) -> list[str]:
    """What of a verdict is checked as prose: the reason, and the merged description when it
    becomes the object caption (an inconsistent verdict's description is empty by design)."""
    return [v.reason, v.description] if v.consistent else [v.reason]


async def describe_object(session: ModelSession, crop_jpeg: bytes, masked_jpeg: bytes, *,
                          video_id: str | None = None,
                          masklet_id: int | None = None) -> ObjectDescriptions:
    """Two captions of the object, from the crop and from the masked full frame (concurrent)."""
    try:
        (crop, _), (masked, _) = await asyncio.gather(
            session.complete("object_crop", [crop_jpeg]),
            session.complete("object_masked", [masked_jpeg]))
    except RecordError as e:
        raise with_where(e, video_id, masklet_id) from e.__cause__
    return ObjectDescriptions(crop=crop, masked=masked)


async def judge_consistency(session: ModelSession, a: str, b: str, *,
                            video_id: str | None = None,
                            masklet_id: int | None = None) -> JudgeResult:
    """Qwen2 decides whether caption ``a`` (crop) and ``b`` (masked frame) agree."""
    try:
        res, verdict = await session.complete(
            "judge", inputs={"description_a": a, "description_b": b},
            response_format=JUDGE_RESPONSE_FORMAT, parse=parse_verdict, prose=verdict_texts)
    except RecordError as e:
        raise with_where(e, video_id, masklet_id) from e.__cause__
    assert verdict is not None
    return JudgeResult(**res.model_dump(), **verdict.model_dump())


async def describe_scene(session: ModelSession, contour_jpeg: bytes, object_text: str, *,
                         video_id: str | None = None,
                         masklet_id: int | None = None) -> CallResult:
    """The object (outlined in yellow) in relation to its scene."""
    try:
        res, _ = await session.complete("scene", [contour_jpeg],
                                        {"object_description": object_text})
    except RecordError as e:
        raise with_where(e, video_id, masklet_id) from e.__cause__
    return res


async def describe_video(session: ModelSession, frames_jpegs: Sequence[bytes], scene_text: str,
                         *, video_id: str | None = None,
                         masklet_id: int | None = None) -> CallResult:
    """The object's motion and actions over the sampled frames (yellow box), in given order."""
    try:
        res, _ = await session.complete("video", list(frames_jpegs),
                                        {"scene_description": scene_text})
    except RecordError as e:
        raise with_where(e, video_id, masklet_id) from e.__cause__
    return res


async def describe_video_distinct(session: ModelSession, frames_jpegs: Sequence[bytes],
                                  scene_text: str, others: Sequence[str], *, round_: int = 0,
                                  video_id: str | None = None,
                                  masklet_id: int | None = None) -> CallResult:
    """The video caption again, contrastively: what sets this object apart from ``others``
    (the descriptions it was confused with). ``round_`` > 0: asked again after an earlier
    contrastive answer (cached, so never asked anew otherwise) left the object ambiguous."""
    listed = "\n".join(f"Object {i}: {t}" for i, t in enumerate(others, 1))
    try:
        res, _ = await session.complete("video_contrastive", list(frames_jpegs),
                                        {"scene_description": scene_text,
                                         "other_objects": listed},
                                        first_attempt=round_ * session.checks.attempts)
    except RecordError as e:
        raise with_where(e, video_id, masklet_id) from e.__cause__
    return res
