"""The validated benchmark: what people accepted (with their edits) and the short expressions
they wrote, as ``<out>/review/validated.parquet`` for the Sa2VA benchmark export."""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ConfigDict

from refsav_pipeline.pipeline.plan import write_atomic
from refsav_pipeline.records import MASKLET_FIELDS, MaskletLocation, masklet_location
from refsav_pipeline.review.paths import validated_path
from refsav_pipeline.review.select import load_benchmark
from refsav_pipeline.review.store import ACCEPTING, DecisionStore


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


def validated_samples(out_dir: str | Path) -> list[ValidatedSample]:
    """Derive the validated rows from the selection and the log (current versions only).

    Status follows the latest accept/reject; each final text is the latest edit of it among
    accepting decisions (a second reviewer's plain accept keeps the first one's fix).
    """
    store = DecisionStore.for_run(out_dir)
    samples = load_benchmark(out_dir)
    by_key: dict[tuple, list] = defaultdict(list)
    for d in store.decisions():
        if d.action != "skip":
            by_key[d.key].append(d)
    out = []
    for s in samples:
        ds = [d for d in by_key[s.key] if d.sample_version == s.sample_version]
        if not ds:
            continue
        accepted = ds[-1].action in ACCEPTING
        shorts = list(dict.fromkeys(d.short_expression.strip() for d in ds
                                    if d.short_expression and d.short_expression.strip()))
        if not accepted and not shorts:
            continue
        texts = {"object_caption": s.object_caption, "scene_caption": s.scene_caption,
                 "video_caption": s.video_caption}
        for d in ds:
            if d.action in ACCEPTING:
                for field in texts:
                    edit = getattr(d, f"edited_{field}")
                    if edit is not None and edit.strip():
                        texts[field] = edit.strip()
        edited = accepted and any(texts[f] != getattr(s, f) for f in texts)
        final: dict[str, str | None] = dict(texts) if accepted else dict.fromkeys(texts)
        out.append(ValidatedSample(
            **masklet_location(s.model_dump()), long_accepted=accepted, **final, edited=edited,
            short_expressions=shorts, reviewers=sorted({d.reviewer for d in ds}),
            decision_seqs=[d.seq for d in ds], sample_version=s.sample_version,
            config_fingerprint=s.config_fingerprint))
    return out


def export_validated(out_dir: str | Path) -> tuple[Path, list[ValidatedSample]]:
    rows = validated_samples(out_dir)
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=VALIDATED_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = validated_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return path, rows


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
