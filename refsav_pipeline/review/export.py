"""The validated benchmark: what people accepted (with their edits) and the short expressions
they wrote, as ``<out>/review/validated.parquet`` for the Sa2VA benchmark export."""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from refsav_pipeline.pipeline.plan import write_atomic
from refsav_pipeline.records import MASKLET_FIELDS, MaskletLocation, masklet_location
from refsav_pipeline.review.consensus import CAPTION_FIELDS, consensus
from refsav_pipeline.review.limits import first_too_long, too_long
from refsav_pipeline.review.paths import validated_path
from refsav_pipeline.review.select import load_benchmark
from refsav_pipeline.review.store import Decision, DecisionStore


class ValidatedSample(MaskletLocation):
    """One benchmark object after review.

    ``long_accepted``: the long expression (``video_caption``, Ref-SAV's "formated" text, with
    ``object_caption``/``scene_caption`` as its earlier stages) passed review. Rows whose long
    text was rejected are kept only when a reviewer wrote a short expression (a valid
    short-type expression for the object); their three captions are null, so a reader that
    treats every row as accepted can never emit a rejected long text.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    long_accepted: bool
    object_caption: str | None
    scene_caption: str | None
    video_caption: str | None
    edited: bool  # some final text differs from the pipeline's
    short_expressions: list[str]
    reviewers: list[str]
    decision_seqs: list[int]  # the log entries this row is derived from
    sample_version: str
    config_fingerprint: str


VALIDATED_SCHEMA = pa.schema([
    *MASKLET_FIELDS,
    pa.field("long_accepted", pa.bool_(), nullable=False),
    pa.field("object_caption", pa.string()),
    pa.field("scene_caption", pa.string()),
    pa.field("video_caption", pa.string()),
    pa.field("edited", pa.bool_(), nullable=False),
    pa.field("short_expressions", pa.list_(pa.string()), nullable=False),
    pa.field("reviewers", pa.list_(pa.string()), nullable=False),
    pa.field("decision_seqs", pa.list_(pa.int64()), nullable=False),
    pa.field("sample_version", pa.string(), nullable=False),
    pa.field("config_fingerprint", pa.string(), nullable=False),
])


class ExportRefusal(BaseModel):
    """A sample left out of the export, and why (the others are still written)."""

    video_id: str
    masklet_type: str
    masklet_id: int
    reason: str


def validated_samples(out_dir: str | Path) -> tuple[list[ValidatedSample], list[ExportRefusal],
                                                     int]:
    """Derive the validated rows from the selection and the log (current versions only), as
    ``consensus`` defines them: (rows, refused rows, disputed samples awaiting adjudication).

    A row with text over the limits is refused whole, with the reason: oversized text never
    reaches the benchmark, whoever wrote it.
    """
    store = DecisionStore.for_run(out_dir)
    samples = load_benchmark(out_dir)
    by_key: dict[tuple, list[Decision]] = defaultdict(list)
    for d in store.decisions():
        by_key[d.key].append(d)
    out: list[ValidatedSample] = []
    refused: list[ExportRefusal] = []
    disputed = 0
    for s in samples:
        c = consensus(s, by_key[s.key])
        if c.status == "disputed":
            disputed += 1
            continue
        accepted = c.status == "accepted"
        if c.status == "pending" or (not accepted and not c.short_expressions):
            continue
        problem = first_too_long(c.texts if accepted else {}) or next(
            (m for x in c.short_expressions if (m := too_long("short_expression", x))), None)
        if problem:
            refused.append(ExportRefusal(video_id=s.video_id, masklet_type=s.masklet_type,
                                         masklet_id=s.masklet_id, reason=problem))
            continue
        edited = accepted and any(c.texts[f] != getattr(s, f) for f in CAPTION_FIELDS)
        final: dict[str, str | None] = dict(c.texts) if accepted else dict.fromkeys(c.texts)
        out.append(ValidatedSample(
            **masklet_location(s.model_dump()), long_accepted=accepted, **final, edited=edited,
            short_expressions=c.short_expressions, reviewers=c.reviewers,
            decision_seqs=c.decision_seqs, sample_version=s.sample_version,
            config_fingerprint=s.config_fingerprint))
    return out, refused, disputed


def export_validated(out_dir: str | Path) -> tuple[Path, list[ValidatedSample]]:
    path, rows, _, _ = export_report(out_dir)
    return path, rows


def export_report(out_dir: str | Path
                  ) -> tuple[Path, list[ValidatedSample], list[ExportRefusal], int]:
    """Write ``validated.parquet``; also returns the refused rows and the disputed count."""
    rows, refused, disputed = validated_samples(out_dir)
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=VALIDATED_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = validated_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return path, rows, refused, disputed


def load_validated(out_dir: str | Path) -> list[ValidatedSample]:
    """The exported validated benchmark (``refsav review export`` first), in review order.
    Long expressions: rows with ``long_accepted`` (captions non-null exactly there); short
    expressions: ``short_expressions`` of every row. A key listed twice is a ``ValueError``."""
    path = validated_path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `refsav review export --out {out_dir}`")
    table = pq.read_table(path, schema=VALIDATED_SCHEMA)
    samples = [ValidatedSample.model_validate(d) for d in table.to_pylist()]
    counts = Counter(s.key for s in samples)
    dup = sorted(k for k, n in counts.items() if n > 1)
    if dup:
        raise ValueError(f"{path}: samples listed more than once: {dup[:5]}")
    return samples
