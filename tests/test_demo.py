"""`refsav demo`, the README's quick-start job, as a new user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from refsav_pipeline.llm.answer_checks import AnswerChecker
from refsav_pipeline.records import read_rows, shard_files
from refsav_pipeline.sav.synth import load_truth

pytestmark = pytest.mark.slow
CHECK = AnswerChecker()


def test_demo_runs_the_whole_job(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "refsav_pipeline.cli", "demo", "--out", str(out), "--videos",
           "3", "--no-progress"]
    # A stale RAY_ADDRESS (or `ray start` file) must not hijack the local instance.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "local Ray instance: 1 node(s)" in res.stderr
    assert "3 / 3" in res.stdout and "Parquet shards" in res.stdout
    truth = load_truth(out / "sav")
    rows = read_rows(out / "run").to_pylist()
    assert len(rows) == len(truth) and len(shard_files(out / "run")) == 2
    for r in rows:
        t = truth[(r["video_id"], r["masklet_type"], r["masklet_id"])]
        assert r["status"] == "ok" and t.color in r["video_caption"]
    report = out / "run" / "report" / "index.html"
    assert report.is_file() and report.as_uri() in res.stdout.replace("\n", "")
    assert 'id="quality"' in report.read_text()
    # no exported expression names the yellow marks the captioner was shown
    export = subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", "export", "sa2va",
                             "--out", str(out / "run"), "--to", str(tmp_path / "export"),
                             "--part", "train"], capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    data = json.loads((tmp_path / "export" / "Ref-SAV.json").read_text())
    expressions = [o["formated"] for e in data.values() for o in e["objects"].values()]
    assert len(expressions) == len(rows)
    assert all(CHECK.check("video", x) is None for x in expressions), expressions
    # a second demo finds everything done and changes nothing
    before = {f: f.read_bytes() for f in shard_files(out / "run")}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PATH": "/usr/bin:/bin"})  # no refsav on PATH
    assert again.returncode == 0, again.stderr[-3000:]
    # nothing to do: neither Ray nor the model server is started
    assert "0 of 2 shards to do" in again.stderr
    assert "Ray" not in again.stderr and "model server" not in again.stderr
    # the last lines: how to get `refsav` on PATH, then what to try next
    tail = again.stdout[again.stdout.index("next steps:"):]
    assert "source " in tail and "bin/activate" in tail
    for step in ("status", "benchmark select", "review", "export sa2va"):
        assert f"refsav {step} --out {out / 'run'}" in tail
    assert {f: f.read_bytes() for f in shard_files(out / "run")} == before
