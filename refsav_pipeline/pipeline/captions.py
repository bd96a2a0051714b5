"""The model stage: the Ref-SAV recipe for one masklet, as a chain of four model calls.

object captions ×2 (crop, masked frame) → consistency judge → scene caption → video caption.
A rejected description stops the chain (the row keeps the judge's reason); a failed call stops
it too, keeping every caption made so far and the error. A call whose every answer failed its
checks (``llm.answer_checks``) makes the row ``rejected`` with the defect as ``error_kind``
and the last answer in ``rejected_answer``. ``recaption_distinct`` is the referring-uniqueness
step's second video caption (``pipeline.uniqueness``).
"""

from __future__ import annotations

import traceback
from typing import Any

from refsav_pipeline.errors import RecordError, RunStopped
from refsav_pipeline.llm.calls import (
    describe_object,
    describe_scene,
    describe_video,
    describe_video_distinct,
    judge_consistency,
)
from refsav_pipeline.llm.errors import AnswerRejected
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
        self.check_failures: list[str] = []

    def record(self, call: str, result: CallResult) -> str:
        self.check_failures.extend(f"{call}:{k}" for k in result.check_failures)
        self.versions[call] = result.prompt_ref
        self.latency[call] = round(result.latency_s, 6)
        self.call_prompt_tokens[call] = result.usage.prompt_tokens
        self.call_completion_tokens[call] = result.usage.completion_tokens
        self.cached += int(result.cached)
        return result.text

    def row(self, status: str, err: BaseException | None = None) -> RefSavRow:
        extra: dict[str, Any] = {}
        if isinstance(err, AnswerRejected):
            self.check_failures.extend(f"{err.call}:{k}" for k in err.failures)
            status = "rejected"
            extra = {"error_kind": err.kind, "error": str(err), "rejected_answer": err.answer}
        elif isinstance(err, RecordError):
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
                         cached_calls=self.cached, check_failures=self.check_failures)


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


async def recaption_distinct(session: ModelSession, job: MaskletJob, row: RefSavRow,
                             others: list[str], round_: int = 0) -> RefSavRow:
    """``row`` (ok, its video caption a near-duplicate of another object's) with a contrastive
    video caption; the first one moves to ``first_video_caption``. Never raises for a bad
    record: a failed or rejected call makes the row failed or rejected."""
    first = row.first_video_caption or row.video_caption
    try:
        res = await describe_video_distinct(
            session, job.frames_jpegs, row.scene_caption or "", others, round_=round_,
            video_id=row.video_id, masklet_id=row.masklet_id)
    except RunStopped:
        raise
    except Exception as err:  # noqa: BLE001 - a row must record any failure, not lose it
        b = _RowBuilder(job, session)
        b.check_failures = list(row.check_failures)
        failed = b.row("failed", err)
        keep = {"first_video_caption": first,
                "check_failures": failed.check_failures, "status": failed.status,
                "error_kind": failed.error_kind, "error": failed.error,
                "rejected_answer": failed.rejected_answer}
        return row.model_copy(update=keep)
    def per_call(field: str, value: Any) -> Any:
        return getattr(row, field).model_copy(update={"video": value})
    prompt = int(row.prompt_tokens_by_call.video or 0) + res.usage.prompt_tokens
    completion = int(row.completion_tokens_by_call.video or 0) + res.usage.completion_tokens
    return row.model_copy(update={
        "video_caption": res.text, "first_video_caption": first,
        "prompt_versions": per_call("prompt_versions", res.prompt_ref),
        "latency_s": per_call("latency_s", round(res.latency_s, 6)),
        "prompt_tokens_by_call": per_call("prompt_tokens_by_call", prompt),
        "completion_tokens_by_call": per_call("completion_tokens_by_call", completion),
        "prompt_tokens": row.prompt_tokens + res.usage.prompt_tokens,
        "completion_tokens": row.completion_tokens + res.usage.completion_tokens,
        "cached_calls": row.cached_calls + int(res.cached),
        "check_failures": [*row.check_failures,
                           *(f"video_contrastive:{k}" for k in res.check_failures)],
    })
