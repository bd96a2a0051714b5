"""Finding the videos of an SA-V root, nested (``sav_train/sav_0XX/…``) or flat."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MANUAL_SUFFIX = "_manual.json"
AUTO_SUFFIX = "_auto.json"


class SavVideoRef(BaseModel):
    """Where one video's files are, relative to the SA-V root (as Sa2VA's Ref-SAV.json wants)."""

    model_config = ConfigDict(frozen=True)

    video_id: str
    video_path: str
    manual_path: str
    auto_path: str | None = None

    def annotation_paths(self) -> dict[str, str]:
        paths = {"manual": self.manual_path}
        if self.auto_path is not None:
            paths["auto"] = self.auto_path
        return paths


def index_sav_root(root: str | Path) -> list[SavVideoRef]:
    """Every video with a ``_manual.json`` (SA-V ships one per video), sorted by video id.

    A video whose id appears twice under the root is an error: the plan must be unambiguous.
    Each folder is listed once and nothing else is read (``rglob`` lists every folder twice,
    and a stat per video for its ``_auto.json`` is another listing's worth on shared storage).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SA-V root {root} is not a directory")
    found: list[tuple[Path, bool]] = []
    for folder, _, files in os.walk(root):
        names = set(files)
        found.extend((Path(folder) / name,
                      name.removesuffix(MANUAL_SUFFIX) + AUTO_SUFFIX in names)
                     for name in files if name.endswith(MANUAL_SUFFIX))
    refs: dict[str, SavVideoRef] = {}
    for manual, has_auto in sorted(found):
        ref = _ref_for(root, manual, has_auto)
        if ref.video_id in refs:
            raise ValueError(
                f"video {ref.video_id} appears twice: {refs[ref.video_id].manual_path} and "
                f"{ref.manual_path}"
            )
        refs[ref.video_id] = ref
    return [refs[k] for k in sorted(refs)]


def find_video(root: str | Path, video_id: str) -> SavVideoRef:
    root = Path(root)
    hits = sorted(root.rglob(f"{video_id}{MANUAL_SUFFIX}"))
    if not hits:
        raise FileNotFoundError(f"no {video_id}{MANUAL_SUFFIX} under {root}")
    return _ref_for(root, hits[0])


def _ref_for(root: Path, manual: Path, has_auto: bool | None = None) -> SavVideoRef:
    """``has_auto``: whether the folder's listing holds the ``_auto.json`` (else a stat)."""
    video_id = manual.name[: -len(MANUAL_SUFFIX)]
    folder = manual.parent
    auto = folder / f"{video_id}{AUTO_SUFFIX}"
    if has_auto is None:
        has_auto = auto.exists()
    return SavVideoRef(
        video_id=video_id,
        video_path=(folder / f"{video_id}.mp4").relative_to(root).as_posix(),
        manual_path=manual.relative_to(root).as_posix(),
        auto_path=auto.relative_to(root).as_posix() if has_auto else None,
    )
