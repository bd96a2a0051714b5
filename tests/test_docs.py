"""No documented command goes stale: every `refsav …` line in the README and docs/ is a real
command with real options, and the ones that work on the demo's data are run against a demo
run made here."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from docs_commands import ROOT, DocCommand, check_command, click_app, doc_commands

SERVERS = (("review",), ("serve", "reference"), ("serve", "vllm"))
"""Commands that serve until stopped: their lines are checked, not run."""


def test_every_documented_command_is_a_real_command() -> None:
    commands = doc_commands()
    assert len(commands) > 20 and any(c.fenced for c in commands)
    app = click_app()
    wrong = {}
    for c in commands:
        try:
            why = check_command(app, c.argv())
        except ValueError as exc:  # unbalanced quotes
            why = f"not a shell line: {exc}"
        if why:
            wrong[c.source] = f"{c.text!r}: {why}"
    assert not wrong, wrong


def test_the_check_catches_stale_commands(tmp_path: Path) -> None:
    app = click_app()
    assert check_command(app, ["run", "--sav-root", "X", "--out", "Y"]) is None
    assert check_command(app, ["review", "--out", "DIR", "--port", "7860"]) is None
    assert "no option --shard" in check_command(app, ["run", "--shard", "3"])
    assert "no sub-command 'inspekt'" in check_command(app, ["sav", "inspekt"])
    doc = tmp_path / "x.md"
    doc.write_text("Try `refsav status --out RUN [--json]`.\n\n```bash\n"
                   "refsav export sa2va --out RUN \\\n  --to DEST   # a comment\n```\n")
    found = doc_commands([doc])
    assert [c.fenced for c in found] == [True, False]
    assert found[0].argv() == ["export", "sa2va", "--out", "RUN", "--to", "DEST"]
    assert found[1].argv() == ["status", "--out", "RUN", "--json"]


def runnable(c: DocCommand) -> bool:
    """A concrete command on the demo's data or the repository's test data, not a server."""
    argv = c.argv()
    serves = any(tuple(argv[:len(s)]) == s and not (s == ("review",) and len(argv) > 1
                                                     and not argv[1].startswith("-"))
                 for s in SERVERS)
    concrete = c.fenced or "[" not in c.text  # a synopsis with [options] is not a command
    return concrete and not serves and ("annotations/demo" in c.text or "tests/data/" in c.text)


@pytest.mark.slow
def test_documented_demo_commands_run(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", "demo", "--out", str(demo),
                    "--no-progress"], check=True, capture_output=True, timeout=600, cwd=ROOT)
    commands = [c for c in doc_commands() if runnable(c)]
    assert commands, "the docs show no command on the demo's data"
    for c in commands:
        argv = [a.replace("annotations/demo", str(demo)) for a in c.argv()]
        res = subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", *argv],
                             capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert res.returncode == 0, (c.source, shlex.join(argv), res.stdout[-2000:],
                                     res.stderr[-2000:])
