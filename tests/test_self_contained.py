"""A clone anywhere passes its tests: no test, script, benchmark or doc reads a path outside
the repository (a `../shared` beside one checkout is not beside every clone)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "scripts", "benchmarks", "docs", ".ci", "deploy", "configs")
# `..` as a path component inside a literal path: ../x, ..\x, "..", "x"
PARENT = re.compile(r"""(?<![\w.])\.\.[/\\][\w.$/{}\\-]*|["']\.\.["']""")
# things that name the sibling folder however they are spelled
SIBLING = re.compile(r"""shared[/\\"', ]+fixtures|\.\./shared""")


def _repo_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    files = [ROOT / p for p in listed
             if p == "README.md" or p.split("/", 1)[0] in SCANNED]
    return [f for f in files if f.is_file() and f.suffix not in {".gz", ".png", ".jpg", ".mp4"}]


def outside_references(path: Path, text: str) -> list[str]:
    """Each `..` path in `text` that leaves the repository, resolved both from the file's folder
    and from the repository root (scripts and the README run from the root)."""
    found = [m.group(0) for m in SIBLING.finditer(text)]
    for m in PARENT.finditer(text):
        ref = m.group(0).strip("\"'")
        ref = re.sub(r"\{[^}]*\}|\$\w+", "x", ref)  # f-string and shell holes stand for a name
        escapes = [not (base / ref).resolve().is_relative_to(ROOT)
                   for base in (path.parent, ROOT)]
        if all(escapes):
            found.append(m.group(0))
    return found


def test_nothing_refers_outside_the_repository() -> None:
    files = _repo_files()
    assert any(f.name == "conftest.py" for f in files) and any(f.name == "README.md"
                                                               for f in files)
    bad = {}
    for f in files:
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        if f == Path(__file__):
            continue
        refs = outside_references(f, text)
        if refs:
            bad[str(f.relative_to(ROOT))] = refs
    assert not bad, f"paths outside the repository: {bad}"


def test_the_scan_finds_what_it_should() -> None:
    here = ROOT / "tests" / "x.py"
    assert outside_references(here, 'p = ROOT / ".." / "shared" / "fixtures"')
    assert outside_references(here, "see ../shared/fixtures/sa-v/")
    assert outside_references(ROOT / "README.md", "refsav sav inspect --sav-root ../data")
    assert outside_references(here, 'open("../../etc/passwd")')
    # inside the repository, or a name that only looks like a path
    assert not outside_references(here, 'video_path=f"../{vid}.mp4"')
    assert not outside_references(ROOT / "README.md", "see tests/data/sa-v and docs/x.md")
    assert not outside_references(here, "a range 1..3 and the ellipsis ...")


def test_real_sav_fixture_is_in_the_repository(real_sav_dir: Path) -> None:
    assert real_sav_dir.resolve().is_relative_to(ROOT)
    assert (real_sav_dir / "sav_000001_manual.json").stat().st_size > 100_000
    assert "CC BY 4.0" in (real_sav_dir / "README.md").read_text()
