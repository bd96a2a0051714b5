"""Benchmark selection: whole videos, disjoint from training, stratified, reproducible."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from factories import write_fake_run
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.records import (
    MASKLET_FIELDS,
    ROW_SCHEMA,
    MaskletLocation,
    RefSavRow,
    read_rows,
)
from refsav_pipeline.review.export import VALIDATED_SCHEMA, ValidatedSample
from refsav_pipeline.review.select import (
    BENCHMARK_SCHEMA,
    BenchmarkSample,
    SelectionExists,
    benchmark_video_ids,
    load_benchmark,
    select_and_write,
    select_benchmark,
    stratum_of,
)
from refsav_pipeline.review.store import DecisionStore, NewDecision, count_decisions

SHARES = {("manual", "small"): 0.4, ("manual", "large"): 0.2, ("auto", "medium"): 0.3,
          ("auto", "small"): 0.1}


def fake_rows(videos: int = 400, seed: int = 1) -> list[dict]:
    """Rows of ``videos`` videos with 1-4 objects each, strata drawn from ``SHARES``; every
    tenth row failed."""
    rng = np.random.default_rng(seed)
    strata = list(SHARES)
    rows = []
    for v in range(videos):
        ids: dict[str, int] = defaultdict(int)
        for k in range(int(rng.integers(1, 5))):
            mtype, bucket = strata[rng.choice(len(strata), p=list(SHARES.values()))]
            failed = len(rows) % 10 == 9
            rows.append(dict(
                video_id=f"sav_{v:06d}", masklet_type=mtype, masklet_id=ids[mtype],
                masklet_index=k, video_path=f"v/{v}.mp4", anno_path=f"v/{v}_{mtype}.json",
                height=480, width=640, video_frame_count=97, size_bucket=bucket,
                max_area_frame=None if failed else 8, max_area=None if failed else 100,
                sampled_frames=[] if failed else [0, 4, 8], bbox=[1, 2, 3, 4],
                object_caption=None if failed else "obj", scene_caption=None if failed else "s",
                video_caption=None if failed else f"video caption {v} {k}",
                status="failed" if failed else "ok", config_fingerprint="fp",
                pipeline_version="0.1.0"))
            ids[mtype] += 1
    return rows


def test_count_respected_with_whole_videos_of_ok_rows_only() -> None:
    rows = fake_rows()
    samples = select_benchmark(rows, count=300, seed=0)
    assert 300 - 4 < len(samples) <= 300  # whole videos: at most one small video short
    ok_by_video: dict[str, set] = defaultdict(set)
    for r in rows:
        if r["status"] == "ok":
            ok_by_video[r["video_id"]].add((r["video_id"], r["masklet_type"], r["masklet_id"]))
    chosen = defaultdict(set)
    for s in samples:
        chosen[s.video_id].add(s.key)
    for video_id, keys in chosen.items():
        assert keys == ok_by_video[video_id], "a chosen video must bring all its ok objects"
    assert len({s.key for s in samples}) == len(samples)
    assert [s.position for s in samples] == list(range(len(samples)))


def test_rejected_rows_are_never_picked() -> None:
    """Rows whose answers failed their checks keep their captions (for inspection), but a
    benchmark never shows them: only ok rows are eligible."""
    rows = fake_rows(videos=60)
    for i, r in enumerate(rows):
        if r["status"] == "ok" and i % 3 == 0:
            r.update(status="rejected", error_kind="prompt_leak",
                     rejected_answer="The object outlined in yellow.")
    rejected = {(r["video_id"], r["masklet_type"], r["masklet_id"]) for r in rows
                if r["status"] == "rejected"}
    samples = select_benchmark(rows, count=1000, seed=0)
    assert rejected and samples and not {s.key for s in samples} & rejected


def test_strata_follow_population_shares() -> None:
    rows = fake_rows(videos=600)
    ok = [r for r in rows if r["status"] == "ok"]
    population = Counter(stratum_of(r["masklet_type"], r["size_bucket"]) for r in ok)
    samples = select_benchmark(rows, count=400, seed=5)
    got = Counter(s.stratum for s in samples)
    for stratum, n in population.items():
        assert abs(got[stratum] / len(samples) - n / len(ok)) < 0.04, (stratum, got, population)


def test_reproducible_by_seed() -> None:
    rows = fake_rows()
    a = select_benchmark(rows, count=200, seed=7)
    b = select_benchmark(list(reversed(rows)), count=200, seed=7)
    c = select_benchmark(rows, count=200, seed=8)
    assert [s.key for s in a] == [s.key for s in b]
    assert [s.double_review for s in a] == [s.double_review for s in b]
    assert {s.video_id for s in a} != {s.video_id for s in c}


def test_double_review_fraction() -> None:
    samples = select_benchmark(fake_rows(), count=300, seed=0, double_review=0.1)
    assert sum(s.double_review for s in samples) == round(0.1 * len(samples))


def test_written_selection_is_disjoint_from_training(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_fake_run(synth_root, out, fail_every=5)
    samples = select_and_write(out, count=4, seed=0)
    held_out = benchmark_video_ids(out)
    assert held_out == {s.video_id for s in samples} and held_out
    all_videos = set(read_rows(out).column("video_id").to_pylist())
    training = all_videos - held_out
    assert training and not training & held_out
    assert [s.key for s in load_benchmark(out)] == [s.key for s in samples]
    assert all(s.sample_version and len(s.sampled_frames) == 8 for s in samples)
    assert benchmark_video_ids(tmp_path / "no-selection") == set()


def test_reselect_refused_once_decisions_exist(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    write_fake_run(synth_root, out)
    first = select_and_write(out, count=6, seed=0)
    select_and_write(out, count=6, seed=1)  # no decisions yet: replacing is fine
    s = load_benchmark(out)[0]
    DecisionStore.for_run(out).record(NewDecision(
        video_id=s.video_id, masklet_type=s.masklet_type, masklet_id=s.masklet_id,
        sample_version=s.sample_version, reviewer="alice", action="accept"))
    with pytest.raises(SelectionExists):
        select_and_write(out, count=6, seed=2, decisions=count_decisions(out))
    runner = CliRunner()
    refused = runner.invoke(app, ["benchmark", "select", "--out", str(out), "--count", "6"])
    assert refused.exit_code == 2 and "--force" in refused.output
    forced = runner.invoke(app, ["benchmark", "select", "--out", str(out), "--count", "6",
                                 "--seed", "0", "--force"])
    assert forced.exit_code == 0, forced.output
    assert [x.key for x in load_benchmark(out)] == [x.key for x in first]
    assert len(DecisionStore.for_run(out).decisions()) == 1  # decisions survive a re-select


@pytest.mark.parametrize(("schema", "model"), [(ROW_SCHEMA, RefSavRow),
                                               (BENCHMARK_SCHEMA, BenchmarkSample),
                                               (VALIDATED_SCHEMA, ValidatedSample)])
def test_schemas_share_the_masklet_fields_and_match_their_models(schema, model) -> None:
    start = schema.get_field_index("video_id")
    assert list(schema)[start:start + len(MASKLET_FIELDS)] == MASKLET_FIELDS
    assert [f.name for f in MASKLET_FIELDS] == list(MaskletLocation.model_fields) == [
        "video_id", "masklet_type", "masklet_id", "masklet_index", "video_path", "anno_path",
        "height", "width", "video_frame_count", "size_bucket"]
    assert issubclass(model, MaskletLocation)
    assert sorted(schema.names) == sorted(model.model_fields)
    if model is RefSavRow:
        assert schema.names == list(model.model_fields)
