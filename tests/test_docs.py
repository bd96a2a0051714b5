"""No documented command goes stale: every `refsav …` line in the README and docs/ is a real
command with real options, and the ones that work on the demo's data are run against a demo
run made here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from docs_commands import ROOT, DocCommand, check_command, click_app, doc_commands, documents

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.serve.readiness import wait_healthy

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


def background_server(c: DocCommand) -> bool:
    """A documented `refsav serve reference … &`: the walkthrough's offline model server."""
    return c.background and c.argv()[:2] == ["serve", "reference"]


@pytest.mark.slow
def test_documented_demo_commands_run(tmp_path: Path) -> None:
    """The demo first (as the quick start), then every documented command on its data in the
    docs' order, with the reference server the walkthrough starts (stopped at the end)."""
    demo = tmp_path / "demo"
    subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", "demo", "--out", str(demo),
                    "--no-progress"], check=True, capture_output=True, timeout=600, cwd=ROOT)
    commands = [c for c in doc_commands() if runnable(c) or background_server(c)]
    assert sum(runnable(c) for c in commands) >= 5, "the docs show few commands on the demo"
    servers: list[subprocess.Popen] = []
    try:
        for c in commands:
            argv = [a.replace("annotations/demo", str(demo)) for a in c.argv()]
            if background_server(c):
                servers.append(subprocess.Popen(
                    [sys.executable, "-m", "refsav_pipeline.cli", *argv],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
                cfg = PipelineConfig.load(ROOT / argv[argv.index("--config") + 1])
                wait_healthy(cfg.models.captioner.endpoints[0], None, 60,
                             alive=lambda: servers[-1].poll() is None, poll_s=0.2)
                continue
            res = subprocess.run([sys.executable, "-m", "refsav_pipeline.cli", *argv],
                                 capture_output=True, text=True, timeout=600, cwd=ROOT)
            assert res.returncode == 0, (c.source, shlex.join(argv), res.stdout[-2000:],
                                         res.stderr[-2000:])
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(30)

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for doc in documents():
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken, broken
