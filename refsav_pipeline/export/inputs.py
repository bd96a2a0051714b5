"""The export's only view of the benchmark selection and the review decisions.

The review module owns ``<out>/benchmark/benchmark.parquet`` and ``<out>/review/validated.parquet``;
until its functions exist, this adapter reads those files directly. Swapping the bodies of
``benchmark_video_ids`` and ``load_validated`` for the review module's functions is the only change
the export needs later.

Assumed columns (extra columns are ignored):

- ``benchmark.parquet``: ``video_id`` (str), ``masklet_type`` (str), ``masklet_id`` (int).
- ``validated.parquet``: the same key columns, the final texts ``object_caption``,
  ``scene_caption``, ``video_caption`` (str or null) and ``short_expressions`` (list<str> or null).
  Every row is an accepted sample; rejected ones are not in the file. Optional
  ``long_accepted`` (bool, default true): false when people kept the object and its short
  expressions but rejected the long text (the review module writes this column).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

BENCHMARK_FILE = Path("benchmark") / "benchmark.parquet"
VALIDATED_FILE = Path("review") / "validated.parquet"

Key = tuple[str, str, int]  # (video_id, masklet_type, masklet_id), as ``RefSavRow.key``
_KEY_COLUMNS = ["video_id", "masklet_type", "masklet_id"]
_VALIDATED_COLUMNS = [*_KEY_COLUMNS, "object_caption", "scene_caption", "video_caption",
                      "short_expressions"]


class ValidatedSample(BaseModel):
    """One accepted benchmark object with the texts people settled on."""

    model_config = ConfigDict(frozen=True)

    video_id: str
    masklet_type: str
    masklet_id: int
    object_caption: str | None = None
    scene_caption: str | None = None
    video_caption: str | None = None
    short_expressions: tuple[str, ...] = ()
    long_accepted: bool = True

    @property
    def key(self) -> Key:
        return (self.video_id, self.masklet_type, self.masklet_id)


def _read(path: Path, columns: list[str]) -> list[dict]:
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {table.column_names})")
    return table.select(columns).to_pylist()


def has_benchmark(out_dir: str | Path) -> bool:
    return (Path(out_dir) / BENCHMARK_FILE).is_file()


def benchmark_keys(out_dir: str | Path) -> set[Key]:
    """Masklets of the benchmark selection; empty if no selection was made yet."""
    path = Path(out_dir) / BENCHMARK_FILE
    if not path.is_file():
        return set()
    return {(r["video_id"], r["masklet_type"], int(r["masklet_id"]))
            for r in _read(path, _KEY_COLUMNS)}


def benchmark_video_ids(out_dir: str | Path) -> set[str]:
    """Videos of the benchmark selection: every masklet of these stays out of train."""
    return {k[0] for k in benchmark_keys(out_dir)}


def load_validated(out_dir: str | Path) -> list[ValidatedSample]:
    """Accepted reviewed samples, sorted by key (so exports are deterministic)."""
    path = Path(out_dir) / VALIDATED_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the benchmark export needs reviewed samples (refsav review)")
    optional = ["long_accepted"] if "long_accepted" in pq.read_schema(path).names else []
    samples = []
    for r in _read(path, _VALIDATED_COLUMNS + optional):
        r["short_expressions"] = tuple(r["short_expressions"] or ())
        if r.get("long_accepted") is None:
            r.pop("long_accepted", None)
        samples.append(ValidatedSample.model_validate(r))
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"{path}: samples listed more than once: {dup[:5]}")
    return sorted(samples, key=lambda s: s.key)
