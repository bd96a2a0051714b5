"""Hostile annotation files: mutations of the real SA-V file and of the synthetic sample.

Missing keys, wrong types, NaN and ±inf, huge and negative integers, lists where strings
belong, truncated files, wrong RLE sizes and garbled RLE counts. Whatever the mutation, every
video still gets rows, a bad file or masklet fails only its own rows, and the rows fit the
Parquet schema. Hypothesis drives the reading and row building (the CPU stage) per example,
with a fixed seed and a bounded number of examples; the whole pipeline (``refsav run`` with
Ray and the reference server) runs once, on batches of mutations drawn from the same space.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pipeline_helpers import config_for, write_config
from pydantic import BaseModel

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.pipeline.plan import load_plan
from refsav_pipeline.pipeline.prepare import prepare_video
from refsav_pipeline.pipeline.shards import ShardState, shard_states
from refsav_pipeline.records import RefSavRow, read_rows, rows_to_table, shard_files
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.sav.index import find_video, index_sav_root
from refsav_pipeline.sav.synth import synth_sav

T = TypeVar("T")
REAL_ID = "sav_000001"
CFG = PipelineConfig()
RECORD_KINDS = {"bad_json", "missing_json", "rle_size", "bad_rle", "empty_masklet",
                "video_missing", "video_unreadable", "frame_count_mismatch",
                "video_size_mismatch"}

HOSTILE_VALUES: list[Any] = [
    math.nan, math.inf, -math.inf, 1e12, 1e400, -1, -(2**63), 2**64, 10**30, 0, 0.5,
    "text", "", ["list"], [1, 2], None, True, {}, {"size": [1, 1], "counts": "0"},
]
"""Values put where a number, a string, a list or an RLE belongs."""

PER_OBJECT = ("masklet_id", "masklet_type", "masklet_size_bucket", "masklet_size_rel",
              "masklet_first_appeared_frame", "masklet_stability_score")
FILE_KEYS = ("video_id", "video_frame_count", "video_height", "video_width", "video_duration",
             "video_resolution", "video_environment", "masklet", "masklet_num", *PER_OBJECT)


class Mutation(BaseModel):
    """One change to one annotation file, replayable on its original text."""

    video_id: str
    file_type: str  # manual / auto
    op: str  # drop / set / set_object / set_rle / rle_size / counts / truncate
    key: str = ""
    frame: int = 0
    index: int = 0
    value: Any = None
    amount: int = 0

    def apply(self, text: str) -> str:
        if self.op == "truncate":
            return text[: self.amount * len(text) // 100]
        ann = json.loads(text)
        frames = ann.get("masklet") or [[]]
        f = self.frame % len(frames)
        k = self.index % max(1, len(frames[f]))
        if self.op == "drop":
            ann.pop(self.key, None)
        elif self.op == "set":
            ann[self.key] = self.value
        elif self.op == "set_object" and isinstance(ann.get(self.key), list) and ann[self.key]:
            ann[self.key][self.index % len(ann[self.key])] = self.value
        elif self.op == "set_rle" and frames[f]:
            frames[f][k] = {**frames[f][k], self.key: self.value} if self.key else self.value
        elif self.op == "rle_size" and frames[f]:
            h, w = frames[f][k]["size"]
            frames[f][k]["size"] = [h + self.amount, w] if self.frame % 2 else [w, h]
        elif self.op == "counts" and frames[f]:
            c = frames[f][k]["counts"]
            garbled = {0: c[:-1], 1: c + "1", 2: c + "P", 3: c[: len(c) // 2], 4: "o" * 9,
                       5: c[:1] + "~" + c[2:]}
            frames[f][k]["counts"] = garbled[self.amount % 6]
        return json.dumps(ann)


def draw_mutation(pick: Callable[[Sequence[T]], T], upto: Callable[[int], int],
                  targets: Sequence[tuple[str, str]]) -> Mutation:
    """A mutation of one of ``targets`` ((video_id, file type)); ``pick`` chooses from a
    sequence and ``upto(n)`` draws an int in [0, n]: hypothesis or a seeded ``random``."""
    video_id, file_type = pick(targets)
    op = pick(["drop", "set", "set_object", "set_rle", "rle_size", "counts", "truncate"])
    m = Mutation(video_id=video_id, file_type=file_type, op=op, frame=upto(200),
                 index=upto(8), amount=upto(99) - (50 if op == "rle_size" else 0))
    if op in ("drop", "set"):
        m.key = pick(FILE_KEYS)
    elif op == "set_object":
        m.key = pick(PER_OBJECT)
    elif op == "set_rle":
        m.key = pick(["", "size", "counts"])
    if op in ("set", "set_object", "set_rle"):
        m.value = pick(HOSTILE_VALUES)
    return m


@st.composite
def mutations(draw: st.DrawFn, targets: Sequence[tuple[str, str]]) -> Mutation:
    return draw_mutation(lambda seq: draw(st.sampled_from(list(seq))),
                         lambda n: draw(st.integers(0, n)), targets)


def _make_root(root: Path, real_sav_dir: Path, videos: int, seed: int) -> Path:
    synth_sav(root, videos=videos, seed=seed)
    shutil.copy(real_sav_dir / f"{REAL_ID}_manual.json", root / f"{REAL_ID}_manual.json")
    return root


def _targets(root: Path) -> list[tuple[str, str]]:
    return [(ref.video_id, t) for ref in index_sav_root(root) for t in ref.annotation_paths()]


def _rows(root: Path, video_id: str) -> list[RefSavRow]:
    pv = prepare_video(root, find_video(root, video_id), CFG, "f" * 16)
    return [*pv.failed, *(RefSavRow(**j.base, status="ok") for j in pv.jobs)]


def _summary(rows: list[RefSavRow]) -> list[tuple]:
    return [(r.masklet_type, r.masklet_index, r.masklet_id, r.status, r.error_kind,
             r.max_area_frame, tuple(r.sampled_frames), tuple(r.bbox or ())) for r in rows]


@pytest.fixture(scope="module")
def fuzz_root(real_sav_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_root(tmp_path_factory.mktemp("fuzz-sav"), real_sav_dir, videos=2, seed=7)


@pytest.fixture(scope="module")
def baseline(fuzz_root: Path) -> dict[str, list[RefSavRow]]:
    return {ref.video_id: _rows(fuzz_root, ref.video_id) for ref in index_sav_root(fuzz_root)}


@settings(max_examples=80, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_fails_only_its_own_rows(fuzz_root: Path,
                                              baseline: dict[str, list[RefSavRow]],
                                              data: st.DataObject) -> None:
    m = data.draw(mutations(_targets(fuzz_root)), label="mutation")
    path = fuzz_root / find_video(fuzz_root, m.video_id).annotation_paths()[m.file_type]
    original = path.read_text()
    try:
        path.write_text(m.apply(original))
        rows = _rows(fuzz_root, m.video_id)
    finally:
        path.write_text(original)
    rows_to_table(rows)  # the shard write: every value fits the Parquet schema
    event(f"{m.op}: " + ",".join(sorted({r.error_kind or "ok" for r in rows})))
    assert rows, f"{m}: the video lost all its rows"
    for r in rows:
        assert r.video_id == m.video_id
        if r.status == "failed":
            assert r.error_kind in RECORD_KINDS, (m, r.error_kind, r.error)
            assert r.error.startswith(f"video {m.video_id}"), r.error
    untouched = [r for r in rows if r.masklet_type != m.file_type]
    assert _summary(untouched) == _summary(
        [r for r in baseline[m.video_id] if r.masklet_type != m.file_type])
    if m.op in ("set", "drop", "truncate") and m.key not in ("masklet_size_rel",
                                                               "masklet_first_appeared_frame",
                                                               "masklet_stability_score",
                                                               "video_duration",
                                                               "video_resolution",
                                                               "video_environment"):
        changed = [r for r in rows if r.masklet_type == m.file_type]
        same = _summary(changed) == _summary(
            [r for r in baseline[m.video_id] if r.masklet_type == m.file_type])
        assert same or any(r.error_kind == "bad_json" for r in changed), m


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.mark.slow
def test_pipeline_runs_through_batches_of_mutations(real_sav_dir: Path, tmp_path: Path) -> None:
    """``refsav run`` (Ray, the reference server over HTTP) on a root where every annotation
    file is mutated, two videos per shard (a batch of mutations each): it finishes, every shard
    written and marked, every video has rows, nothing written outside --out."""
    root = _make_root(tmp_path / "sav", real_sav_dir, videos=5, seed=11)
    rng = random.Random(1)
    applied = []
    for target in _targets(root):
        m = draw_mutation(rng.choice, lambda n: rng.randint(0, n), [target])
        path = root / find_video(root, m.video_id).annotation_paths()[m.file_type]
        path.write_text(m.apply(path.read_text()))
        applied.append(m)
    before = _tree(root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    with ReferenceServer(ModelsConfig(), ReferenceServerConfig(port=0)) as server:
        cfg = write_config(config_for(server.url), tmp_path / "cfg.yaml")
        res = subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", "run", "--sav-root",
                              str(root), "--out", str(out), "--config", str(cfg),
                              "--no-progress"], capture_output=True, text=True, timeout=600,
                             cwd=cwd)
    rows = read_rows(out).to_pylist()
    failed = sum(r["status"] == "failed" for r in rows)
    # finished: 0, or 3 when rows failed (exit 1 or 2 would be the run itself failing)
    assert res.returncode == (3 if failed else 0), (applied, res.stderr[-3000:])
    if failed:
        assert f"--out {out} --retry-failed" in res.stderr
    plan = load_plan(out)
    assert {s for s, _ in shard_states(out, plan).values()} == {ShardState.done}
    assert len(shard_files(out)) == len(plan.shards)
    rows = read_rows(out).to_pylist()
    assert {r["video_id"] for r in rows} == {ref.video_id for ref in index_sav_root(root)}
    assert {r["error_kind"] for r in rows if r["status"] == "failed"} <= RECORD_KINDS
    assert _tree(root) == before and not any(cwd.iterdir())
