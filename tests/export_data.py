"""Inputs of the export that other modules own, written by hand for tests: the benchmark
selection (``benchmark/benchmark.parquet``) and the accepted review samples
(``review/validated.parquet``), in the columns ``refsav_pipeline.export.inputs`` documents."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from refsav_pipeline.export.inputs import BENCHMARK_FILE, VALIDATED_FILE
from refsav_pipeline.records import RefSavRow

VALIDATED_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("masklet_type", pa.string()), ("masklet_id", pa.int32()),
    ("object_caption", pa.string()), ("scene_caption", pa.string()),
    ("video_caption", pa.string()), ("short_expressions", pa.list_(pa.string())),
    ("reviewer", pa.string()),  # an extra column the adapter must ignore
])


def final_texts(row: RefSavRow, i: int) -> dict[str, str]:
    """Edited, unique-per-sample final texts (with characters HTML and JSON must escape)."""
    return {
        "object_caption": f"final object #{i} <b>{row.video_id}</b>",
        "scene_caption": f"final scene #{i} & \"{row.masklet_type}\"",
        "video_caption": f"final video #{i}: the object {row.masklet_id} — moves é",
    }


def write_review_inputs(out_dir: Path, rows: list[RefSavRow], n_videos: int = 2,
                        reject: int = 1) -> tuple[set[str], list[dict]]:
    """Benchmark = every masklet of the first ``n_videos`` videos; all ``ok`` ones accepted
    except the first ``reject``. Returns (benchmark video ids, validated records)."""
    videos = sorted({r.video_id for r in rows})[:n_videos]
    bench = [r for r in rows if r.video_id in videos]
    (out_dir / BENCHMARK_FILE).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(
        [{"video_id": r.video_id, "masklet_type": r.masklet_type, "masklet_id": r.masklet_id,
          "score": 1.0} for r in bench]), out_dir / BENCHMARK_FILE)
    accepted = [r for r in bench if r.status == "ok"][reject:]
    records = []
    for i, r in enumerate(accepted):
        shorts = [f"short {i} a", f"short {i} b"] if i % 2 == 0 else []
        records.append({"video_id": r.video_id, "masklet_type": r.masklet_type,
                        "masklet_id": r.masklet_id, **final_texts(r, i),
                        "short_expressions": shorts or None, "reviewer": "ann"})
    (out_dir / VALIDATED_FILE).parent.mkdir(parents=True, exist_ok=True)
    # Written in reverse: the export must not depend on the file's order.
    pq.write_table(pa.Table.from_pylist(records[::-1], schema=VALIDATED_SCHEMA),
                   out_dir / VALIDATED_FILE)
    return set(videos), records


def make_export(synth_root: Path, base: Path, fail_every: int = 4) -> dict:
    """A finished fake run with review inputs, exported in full: everything a test needs."""
    from factories import write_fake_run

    from refsav_pipeline.export.sa2va import export_sa2va

    out, dest = base / "out", base / "dest"
    rows = write_fake_run(synth_root, out, fail_every=fail_every)
    bench_videos, records = write_review_inputs(out, rows)
    train, bench = export_sa2va(out, dest)
    return {"out": out, "dest": dest, "rows": rows, "bench_videos": bench_videos,
            "records": records, "train": train, "bench": bench}
