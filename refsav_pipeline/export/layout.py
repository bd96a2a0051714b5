"""Where the exported files go: a plain folder, or Sa2VA's own ``data/`` tree.

Sa2VA's configs name fixed paths relative to its repository root, so an export placed there is
used without editing a config:

- ``data/video_datas/Ref-SAV.json``: the current training configs (``Sa2VA03RefVOS`` with
  ``dataset_type='refsav'``); the older configs (``VideoSAM2Dataset``) read the same file as
  ``data/video_datas/sam_v_final_v3.json``;
- ``data/video_datas/sam_v_full/``: the SA-V root both join the training paths to;
- ``data/ref_sav_eval/``: the evaluation's ``REF_SAV`` dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from refsav_pipeline.pipeline.plan import write_atomic

TRAIN_FILE = "Ref-SAV.json"
OLD_TRAIN_FILE = "sam_v_final_v3.json"
BENCH_DIR = "ref_sav_eval"
SA2VA_DATA = Path("data")
VIDEO_DATAS = SA2VA_DATA / "video_datas"
SAV_LINK = VIDEO_DATAS / "sam_v_full"
TRAIN_MANIFEST = "refsav_train_manifest.json"
"""Next to the training JSON: the hash of each name written, so only our own file is replaced."""


class LayoutName(StrEnum):
    flat = "flat"
    sa2va = "sa2va"


@dataclass(frozen=True)
class Layout:
    name: LayoutName
    train_files: tuple[Path, ...]  # the same JSON under every name a loader reads
    bench_parent: Path  # holds ref_sav_eval/
    sav_link: Path | None  # where the SA-V root is linked (sa2va layout only)

    @property
    def train_file(self) -> Path:
        return self.train_files[0]

    @property
    def bench_dir(self) -> Path:
        return self.bench_parent / BENCH_DIR


def layout_for(name: LayoutName | str, dest: str | Path) -> Layout:
    dest = Path(dest)
    if LayoutName(name) is LayoutName.flat:
        return Layout(LayoutName.flat, (dest / TRAIN_FILE,), dest, None)
    return Layout(LayoutName.sa2va, (dest / VIDEO_DATAS / TRAIN_FILE,
                                     dest / VIDEO_DATAS / OLD_TRAIN_FILE),
                  dest / SA2VA_DATA, dest / SAV_LINK)


def detect_layout(dest: str | Path) -> Layout:
    """The sa2va layout if ``dest`` holds Sa2VA's ``data/`` tree, else the flat one."""
    dest = Path(dest)
    sa2va = layout_for(LayoutName.sa2va, dest)
    if sa2va.train_file.is_file() or sa2va.bench_dir.is_dir():
        return sa2va
    return layout_for(LayoutName.flat, dest)


def _written_by_us(layout: Layout) -> dict[str, str]:
    path = layout.train_file.parent / TRAIN_MANIFEST
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}


def guard_train_files(layout: Layout) -> None:
    """Refuse to replace a training JSON this exporter did not write, such as the published
    Ref-SAV.json downloaded into Sa2VA's data/ tree."""
    from refsav_pipeline.records import file_sha256  # pyarrow: not for `--help`

    written = _written_by_us(layout)
    for path in layout.train_files:
        if path.exists() and written.get(path.name) != file_sha256(path):
            raise FileExistsError(f"{path} exists and was not written by refsav export: "
                                  "refusing to overwrite it (move it away first)")


def write_train_files(layout: Layout, data: bytes) -> None:
    """The training JSON under each of the layout's names, then the manifest of what we wrote."""
    guard_train_files(layout)
    digest = hashlib.sha256(data).hexdigest()
    for path in layout.train_files:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    manifest = {path.name: digest for path in layout.train_files}
    write_atomic(layout.train_file.parent / TRAIN_MANIFEST,
                 json.dumps(manifest, indent=1, sort_keys=True).encode())


def link_sav_root(link: Path, sav_root: Path) -> None:
    """Point ``link`` at the SA-V root; keep an existing link or folder that already is it.

    Anything else at ``link`` (another dataset, a stale link) is refused rather than replaced:
    it may be the user's own SA-V copy.
    """
    target = sav_root.resolve()
    if link.is_symlink() or link.exists():
        if link.exists() and link.resolve() == target:
            return
        if link.is_symlink() and not link.exists():
            raise FileExistsError(f"{link} is a broken link to {os.readlink(link)}: remove it "
                                  f"so it can point to the SA-V root {target}")
        raise FileExistsError(f"{link} exists and is not the SA-V root {target}: remove it or "
                              "export from a run over that folder")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
