"""The model stage: the Ref-SAV recipe for one masklet, as a chain of four model calls.

object captions ×2 (crop, masked frame) → consistency judge → scene caption → video caption.
A rejected description stops the chain (the row keeps the judge's reason); a failed call stops
it too, keeping every caption made so far and the error.
"""

from __future__ import annotations

import traceback
from typing import Any

from refsav_pipeline.errors import RecordError, RunStopped
from refsav_pipeline.llm.calls import (
    describe_object,
    describe_scene,
    describe_video,
    judge_consistency,
)
from refsav_pipeline.llm.results import CallResult
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.pipeline.prepare import MaskletJob
from refsav_pipeline.records import RefSavRow


class _RowBuilder:
    def __init__(self, job: MaskletJob, session: ModelSession) -> None:
        self.fields: dict[str, Any] = dict(job.base)
        self.fields["captioner_model"] = session.models.captioner.model
        self.fields["judge_model"] = session.models.judge.model
        self.versions: dict[str, str] = {}
        self.latency: dict[str, float] = {}
        self.call_prompt_tokens: dict[str, int] = {}
        self.call_completion_tokens: dict[str, int] = {}
        self.cached = 0

    def record(self, call: str, result: CallResult) -> str:
        self.versions[call] = result.prompt_ref
        self.latency[call] = round(result.latency_s, 6)
        self.call_prompt_tokens[call] = result.usage.prompt_tokens
        self.call_completion_tokens[call] = result.usage.completion_tokens
        self.cached += int(result.cached)
        return result.text

    def row(self, status: str, err: BaseException | None = None) -> RefSavRow:
        extra: dict[str, Any] = {}
        if isinstance(err, RecordError):
            extra = {"error_kind": err.kind, "error": str(err)}
        elif err is not None:
            where = f"video {self.fields['video_id']} masklet {self.fields['masklet_id']}: "
            extra = {"error_kind": "internal_error",
                     "error": where + "".join(traceback.format_exception_only(err)).strip()}
        return RefSavRow(**self.fields, **extra, status=status, prompt_versions=self.versions,
                         latency_s=self.latency,
                         prompt_tokens=sum(self.call_prompt_tokens.values()),
                         completion_tokens=sum(self.call_completion_tokens.values()),
                         prompt_tokens_by_call=self.call_prompt_tokens,
                         completion_tokens_by_call=self.call_completion_tokens,
                         cached_calls=self.cached)


async def caption_masklet(session: ModelSession, job: MaskletJob) -> RefSavRow:
    """One finished row for ``job``; never raises for a bad record."""
    b = _RowBuilder(job, session)
    where = {"video_id": job.base["video_id"], "masklet_id": job.base["masklet_id"]}
    try:
        objects = await describe_object(session, job.crop_jpeg, job.masked_jpeg, **where)
        b.fields["object_caption_crop"] = b.record("object_crop", objects.crop)
        b.fields["object_caption_masked"] = b.record("object_masked", objects.masked)
        verdict = await judge_consistency(session, objects.crop.text, objects.masked.text,
                                          **where)
        b.record("judge", verdict)
        b.fields.update(consistent=verdict.consistent, judge_reason=verdict.reason)
        if not verdict.consistent:
            return b.row("rejected_inconsistent")
        b.fields["object_caption"] = verdict.description
        scene = await describe_scene(session, job.contour_jpeg, verdict.description, **where)
        b.fields["scene_caption"] = b.record("scene", scene)
        video = await describe_video(session, job.frames_jpegs, scene.text, **where)
        b.fields["video_caption"] = b.record("video", video)
        return b.row("ok")
    except RunStopped:
        raise  # not this row's failure: the run stops and the row is redone on resume
    except Exception as err:  # noqa: BLE001 - a row must record any failure, not lose it
        return b.row("failed", err)
