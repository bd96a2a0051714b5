"""The Ref-SAV run end to end: real Ray, real HTTP to the reference server, real Parquet."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import config_for, content, write_config
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.pipeline.driver import RunRefused, execute, prepare_output
from refsav_pipeline.pipeline.shards import ShardState, shard_path, shard_states
from refsav_pipeline.pipeline.status import run_status
from refsav_pipeline.records import ROW_SCHEMA, marker_path, read_rows, shard_files
from refsav_pipeline.sav.index import find_video
from refsav_pipeline.sav.synth import load_truth


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with reference_server(free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def clean_run(synth_root: Path, server: str, local_ray: None,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = config_for(server)
    prepare_output(synth_root, out, cfg)
    execute(out, cfg, show_progress=False)
    return out


def test_captions_match_ground_truth(clean_run: Path, synth_root: Path) -> None:
    rows = read_rows(clean_run).to_pylist()
    truth = load_truth(synth_root)
    assert len(rows) == len(truth)
    assert {(r["video_id"], r["masklet_type"], r["masklet_id"]) for r in rows} == set(truth)
    for r in rows:
        t = truth[(r["video_id"], r["masklet_type"], r["masklet_id"])]
        assert r["status"] == "ok", r["error"]
        assert t.color in r["object_caption_crop"] and t.color in r["object_caption_masked"]
        assert t.color in r["object_caption"] and t.color in r["scene_caption"]
        assert f"moves {t.direction}" in r["video_caption"] or (
            t.direction == "still" and "still" in r["video_caption"]), r["video_caption"]
        assert r["consistent"] is True and r["judge_reason"]
        assert set(r["prompt_versions"].values()) == {
            "object_caption_crop@v1", "object_caption_masked@v1", "consistency_judge@v1",
            "scene_caption@v1", "video_caption@v1"}
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
        assert sum(r["prompt_tokens_by_call"].values()) == r["prompt_tokens"]
        assert sum(r["completion_tokens_by_call"].values()) == r["completion_tokens"]
        assert all(v > 0 for v in r["prompt_tokens_by_call"].values())
        assert len(r["sampled_frames"]) == 8


def test_row_frames_are_the_chosen_frames(clean_run: Path, synth_root: Path) -> None:
    for r in read_rows(clean_run).to_pylist():
        ann = json.loads((synth_root / r["anno_path"]).read_text())
        k = r["masklet_index"]
        assert ann["masklet_id"][k] == r["masklet_id"]
        areas = [int(mask_utils.area(f[k])) for f in ann["masklet"]]
        assert r["max_area_frame"] == 4 * int(np.argmax(areas)) and r["max_area"] == max(areas)


def test_parquet_loads_everywhere(clean_run: Path) -> None:
    files = shard_files(clean_run)
    assert len(files) == 2
    for f in files:
        assert pq.read_schema(f).equals(ROW_SCHEMA)
    df = pd.concat(pd.read_parquet(f) for f in files)
    assert len(df) == read_rows(clean_run).num_rows
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=[str(f) for f in files], split="train",
                      cache_dir=str(clean_run / ".hf-cache"))
    assert ds.num_rows == len(df) and set(ds.column_names) == set(ROW_SCHEMA.names)
    assert ds[0]["prompt_versions"]["judge"] == "consistency_judge@v1"


def test_status_counts(clean_run: Path) -> None:
    st = run_status(clean_run)
    assert st.shards == {"done": 2, "partial": 0, "pending": 0}
    assert st.rows == read_rows(clean_run).num_rows == st.rows_by_status["ok"]
    assert st.model_calls == 5 * st.rows and st.eta_s == 0
    assert st.prompt_tokens == sum(read_rows(clean_run).column("prompt_tokens").to_pylist())


def test_second_run_is_a_no_op_and_config_change_is_refused(
        clean_run: Path, synth_root: Path, server: str) -> None:
    before = {f: f.read_bytes() for f in shard_files(clean_run)}
    cfg = config_for(server, max_attempts=3)  # client settings: same fingerprint
    prepare_output(synth_root, clean_run, cfg)
    stats = execute(clean_run, cfg, show_progress=False)
    assert stats.shards_written == 0
    assert {f: f.read_bytes() for f in shard_files(clean_run)} == before
    other = config_for(server)
    other.render.box_thickness = 5
    with pytest.raises(RunRefused, match="fingerprint"):
        prepare_output(synth_root, clean_run, other)


def test_partial_shard_is_redone_identically(clean_run: Path, synth_root: Path, server: str,
                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(clean_run, out)
    target = shard_path(out, 1)
    target.write_bytes(target.read_bytes()[:100])  # torn write: marker no longer vouches
    marker_path(shard_path(out, 0)).unlink()  # crash between Parquet rename and marker
    plan_states = shard_states(out, prepare_output(synth_root, out, config_for(server)))
    assert {s for s, _ in plan_states.values()} == {ShardState.partial}
    stats = execute(out, config_for(server), show_progress=False)
    assert stats.shards_written == 2
    assert content(read_rows(out)) == content(read_rows(clean_run))
    assert sum(read_rows(out).column("cached_calls").to_pylist()) == 5 * read_rows(out).num_rows


def _corrupt_inputs(root: Path) -> None:
    """One of each bad input the issue names, each in a different video."""
    v1 = find_video(root, "sav_000001")
    (root / v1.video_path).write_bytes(b"\x00\x00\x00\x20ftypisom" + b"garbage" * 100)
    v2 = find_video(root, "sav_000002")
    text = (root / v2.manual_path).read_text()
    (root / v2.manual_path).write_text(text[: len(text) // 2])
    v3 = find_video(root, "sav_000003")
    ann = json.loads((root / v3.manual_path).read_text())
    small = mask_utils.encode(np.zeros((8, 8), np.uint8, order="F"))
    ann["masklet"][2][0] = {"size": [8, 8], "counts": small["counts"].decode()}
    h, w = int(ann["video_height"]), int(ann["video_width"])
    empty = mask_utils.encode(np.zeros((h, w), np.uint8, order="F"))["counts"].decode()
    for frame in ann["masklet"]:
        frame[1] = {"size": [h, w], "counts": empty}
    (root / v3.manual_path).write_text(json.dumps(ann))


def test_bad_inputs_fail_only_their_records(synth_root: Path, server: str, local_ray: None,
                                            tmp_path: Path) -> None:
    root = tmp_path / "sav"
    shutil.copytree(synth_root, root)
    _corrupt_inputs(root)
    out = tmp_path / "run"
    cfg = config_for(server)
    prepare_output(root, out, cfg)
    execute(out, cfg, show_progress=False)
    rows = read_rows(out).to_pylist()
    failed = {(r["video_id"], r["masklet_type"], r["masklet_id"]): r for r in rows
              if r["status"] == "failed"}
    kinds = {k: r["error_kind"] for k, r in failed.items()}
    truth = load_truth(root)
    v1_keys = {k for k in truth if k[0] == "sav_000001"}
    assert {kinds[k] for k in v1_keys} == {"video_unreadable"}
    assert kinds[("sav_000002", "manual", -1)] == "bad_json"
    assert "sav_000002_manual.json" in failed[("sav_000002", "manual", -1)]["error"]
    assert kinds[("sav_000003", "manual", 0)] == "rle_size"
    assert kinds[("sav_000003", "manual", 1)] == "empty_masklet"
    assert "video sav_000003 masklet 1" in failed[("sav_000003", "manual", 1)]["error"]
    assert len(failed) == len(v1_keys) + 3
    ok = [r for r in rows if r["status"] == "ok"]
    # everything else went through: sav_000002's auto file, sav_000004, sav_000003's autos
    expected_ok = {k for k in truth if k[0] == "sav_000004"
                   or (k[0] in ("sav_000002", "sav_000003") and k[1] == "auto")}
    assert {(r["video_id"], r["masklet_type"], r["masklet_id"]) for r in ok} == expected_ok
    assert run_status(out).failures_by_kind["video_unreadable"] == len(v1_keys)


def test_server_faults_then_retry_failed(synth_root: Path, clean_run: Path, local_ray: None,
                                         tmp_path: Path) -> None:
    out = tmp_path / "run"
    with reference_server(free_port(), "--fault-rate", "0.2", "--hang", "3",
                          "--seed", "7") as url:
        cfg = config_for(url, max_attempts=2, max_parse_attempts=1, request_timeout_s=1.0)
        prepare_output(synth_root, out, cfg)
        execute(out, cfg, show_progress=False)
    rows = read_rows(out).to_pylist()
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed, "with 2 tries at 20% faults some rows must exhaust their retries"
    assert len(rows) == read_rows(clean_run).num_rows
    for r in failed:
        assert r["error_kind"] in {"http_5xx", "unparseable_output", "timeout"}, r
        assert r["error"] and r["video_id"] in r["error"]
    with reference_server(free_port()) as url:
        execute(out, config_for(url), retry_failed=True, show_progress=False)
    assert content(read_rows(out)) == content(read_rows(clean_run))
    assert run_status(out).rows_by_status == {"ok": len(rows)}


def test_run_lists_the_sav_root_once(synth_root: Path, server: str, local_ray: None,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`refsav run` checks the root and plans from that one listing: on shared storage at SA-V
    scale each listing of the root costs about a second."""
    folders = [synth_root, *(p for p in synth_root.rglob("*") if p.is_dir())]
    cfg = write_config(config_for(server), tmp_path / "cfg.yaml")
    listed: Counter[Path] = Counter()
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        listed[Path(path)] += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--sav-root", str(synth_root), "--out", str(out),
                                   "--config", str(cfg), "--limit-videos", "2",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert {f: listed[f] for f in folders} == dict.fromkeys(folders, 1)
    truth = load_truth(synth_root)
    first_two = sorted({video_id for video_id, _, _ in truth})[:2]
    assert read_rows(out).num_rows == sum(k[0] in first_two for k in truth)
