"""``refsav requalify``: re-judge a finished run's answers under the current answer checks,
without calling a model.

Checks made stricter after a run (a new leak phrase, a lower word limit, a higher similarity
bar) apply to its rows here: every answer a row keeps is checked again (``llm.answer_checks``),
and the ok rows of each video compared again (``pipeline.uniqueness``). A row whose answer now
fails becomes ``rejected`` with that kind, its answer kept in ``rejected_answer``; then
``refsav resume --retry-failed`` asks the models again for just those rows (the request cache
re-checks every cached answer too, so the failing one is asked anew and the rest come from
the cache). Shards whose rows changed are rewritten (Parquet, then marker); the checks used
become the run's own (``config.json``), so later resumes judge by them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.answer_checks import AnswerChecker
from refsav_pipeline.llm.config import AnswerChecksConfig, CheckedCall
from refsav_pipeline.pipeline.driver import load_run_config, save_config
from refsav_pipeline.pipeline.plan import load_plan
from refsav_pipeline.pipeline.shards import ShardState, read_shard, shard_states, write_shard
from refsav_pipeline.pipeline.uniqueness import settle
from refsav_pipeline.records import RefSavRow

ANSWERS: tuple[tuple[str, str, CheckedCall], ...] = (
    ("object_crop", "object_caption_crop", "object"),
    ("object_masked", "object_caption_masked", "object"),
    ("judge", "judge_reason", "judge"),
    ("judge", "object_caption", "judge"),
    ("scene", "scene_caption", "scene"),
    ("video", "video_caption", "video"),
)
"""(call, column, checked as) of every answer an ok row keeps."""


class RequalifyReport(BaseModel):
    shards: int = 0
    shards_rewritten: int = 0
    rows: int = 0
    newly_rejected: dict[str, int] = {}


def requalify_row(row: RefSavRow, checker: AnswerChecker, keep_chars: int) -> RefSavRow:
    """``row`` judged again: an ok row whose kept answer fails a check now is rejected."""
    if row.status != "ok":
        return row
    for call, column, checked_as in ANSWERS:
        text = getattr(row, column)
        if text is None:
            continue
        defect = checker.check_prose(checked_as, text)
        if defect is not None:
            return row.model_copy(update={
                "status": "rejected", "error_kind": defect.kind, "rejected_answer":
                text[:keep_chars], "check_failures": [*row.check_failures,
                                                      f"{call}:{defect.kind}"],
                "error": f"video {row.video_id} masklet {row.masklet_id}: requalified: its "
                         f"{column} fails {defect.kind} ({defect.detail})"})
    return row


def requalify_rows(rows: list[RefSavRow], checks: AnswerChecksConfig) -> list[RefSavRow]:
    """One shard's rows judged again, in the same order."""
    checker = AnswerChecker(checks)
    out = [requalify_row(r, checker, checks.kept_answer_chars) for r in rows]
    by_video: dict[str, list[int]] = {}
    for i, r in enumerate(out):
        by_video.setdefault(r.video_id, []).append(i)
    for idx in by_video.values():
        video = [out[i] for i in idx]
        ok = {r.key for r in video if r.status == "ok"}
        for i, r in zip(idx, settle(video, ok, checks), strict=True):
            out[i] = r
    return out


def requalify(out_dir: str | Path, config: str | Path | None = None) -> RequalifyReport:
    """Re-judge every finished shard of the run at ``out_dir`` under the checks of ``config``
    (same fingerprint required) or the run's own; returns what changed."""
    out_dir = Path(out_dir)
    cfg: PipelineConfig = load_run_config(out_dir, config)
    plan = load_plan(out_dir)
    report = RequalifyReport()
    rejected: Counter[str] = Counter()
    for shard_id, (state, marker) in shard_states(out_dir, plan).items():
        if state is not ShardState.done or marker is None:
            continue
        rows = read_shard(out_dir, shard_id)
        new = requalify_rows(rows, cfg.checks)
        report.shards += 1
        report.rows += len(rows)
        changed = [n for o, n in zip(rows, new, strict=True) if o != n]
        if changed:
            rejected.update(n.error_kind for o, n in zip(rows, new, strict=True)
                            if n.status == "rejected" and o.status != "rejected")
            write_shard(out_dir, shard_id, new, plan.config_fingerprint, marker.started_at)
            report.shards_rewritten += 1
    saved = load_run_config(out_dir)
    if saved.checks != cfg.checks:
        save_config(out_dir, saved.model_copy(update={"checks": cfg.checks}))
    report.newly_rejected = dict(rejected.most_common())
    return report
