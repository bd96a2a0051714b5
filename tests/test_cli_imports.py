"""Fast commands: `refsav --help`, `refsav status` and `refsav sav inspect` import no heavy
module (Ray, Gradio, torch, OpenCV, pyarrow, pandas); each command imports what it uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refsav_pipeline.pipeline.plan import make_plan, save_plan
from refsav_pipeline.sav.index import index_sav_root

HEAVY = ("ray", "gradio", "torch", "cv2", "pyarrow", "pyarrow.dataset", "pandas")

_PROBE = """
import json, sys
from refsav_pipeline.cli import app
try:
    app(sys.argv[1:], prog_name="refsav")
except SystemExit as e:
    code = e.code
heavy = json.loads(HEAVY)
print(json.dumps({"code": code, "heavy": [m for m in heavy if m in sys.modules]}))
""".replace("HEAVY", repr(json.dumps(HEAVY)))


def _imports_of(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["run", "--help"],
                                  ["sav", "inspect", "--help"], ["export", "--help"]])
def test_help_imports_no_heavy_module(argv: list[str]) -> None:
    assert _imports_of(*argv) == {"code": 0, "heavy": []}


def test_status_and_sav_inspect_import_no_heavy_module(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    refs = index_sav_root(synth_root)
    save_plan(out, make_plan(synth_root, refs, 2, "fp"))
    assert _imports_of("status", "--out", str(out)) == {"code": 0, "heavy": []}
    video = refs[0].video_id
    assert _imports_of("sav", "inspect", "--sav-root", str(synth_root), "--video", video) == \
        {"code": 0, "heavy": []}
