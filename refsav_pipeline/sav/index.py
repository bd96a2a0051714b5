"""Finding the videos of an SA-V root, nested (``sav_train/sav_0XX/…``) or flat."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MANUAL_SUFFIX = "_manual.json"
AUTO_SUFFIX = "_auto.json"
VIDEO_SUFFIX = ".mp4"


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


class SavIndex(BaseModel):
    """The videos of a root, and what the listing left out, by reason (``run`` and
    ``sav inspect`` show it: nothing is skipped silently)."""

    videos: list[SavVideoRef]
    skipped: dict[str, list[str]] = {}  # reason -> paths relative to the root
    without_mp4: list[str] = []  # video ids whose folder lists no {id}.mp4 (rows: video_missing)

    def skipped_line(self) -> str:
        """``skipped 2 paths: not a regular file (FIFO, device or folder) 1: a/b.mp4, …``"""
        parts = [f"{reason} {len(paths)}: {', '.join(paths[:3])}"
                 + (", …" if len(paths) > 3 else "") for reason, paths in self.skipped.items()]
        n = sum(len(v) for v in self.skipped.values())
        return f"skipped {n} path(s) under the SA-V root: " + "; ".join(parts)


NOT_REGULAR = "not a regular file (FIFO, device or folder), never opened"
BROKEN_LINK = "broken symlink"
LINK_LOOP = "symlinked folder seen before (a loop or a second path to it)"


def _kind(entry: os.DirEntry[str]) -> str:
    """'file', 'dir', 'broken' or 'other' (FIFO, device, socket), from the listing (a stat only
    for symlinks, which are followed)."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            return "dir"
    except OSError:
        return "broken"
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "broken"
    return "other"


def scan_sav_root(root: str | Path) -> SavIndex:
    """Every video with a ``_manual.json`` (SA-V ships one per video), sorted by video id.

    Folders and files reached through symlinks are followed (SA-V spread over several disks),
    each real folder once (loops and second paths are skipped). Annotation files and videos
    that are not regular files (a FIFO would block the run forever when opened, as a hung
    mount would) are left out without being opened, as are broken symlinks: counted in
    ``skipped``. A video id that appears twice is an error: the plan must be unambiguous.
    Each folder is listed once and nothing else is read (a stat per video for its
    ``_auto.json`` is another listing's worth on shared storage).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SA-V root {root} is not a directory")
    skipped: dict[str, list[str]] = {}
    found: list[tuple[Path, bool]] = []
    without_mp4: list[str] = []
    seen: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        folder = todo.pop()
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            skipped.setdefault(LINK_LOOP, []).append(folder.relative_to(root).as_posix())
            continue
        seen.add((st.st_dev, st.st_ino))
        kinds: dict[str, str] = {}
        with os.scandir(folder) as it:
            for entry in it:
                kinds[entry.name] = _kind(entry)
        for name, kind in sorted(kinds.items()):
            named_like_ours = name.endswith((MANUAL_SUFFIX, AUTO_SUFFIX, VIDEO_SUFFIX))
            if kind == "dir" and not named_like_ours:
                todo.append(folder / name)
            elif named_like_ours and kind != "file":
                reason = BROKEN_LINK if kind == "broken" else NOT_REGULAR
                skipped.setdefault(reason, []).append((folder / name).relative_to(root)
                                                      .as_posix())
        for name, kind in kinds.items():
            if not (kind == "file" and name.endswith(MANUAL_SUFFIX)):
                continue
            vid = name.removesuffix(MANUAL_SUFFIX)
            if kinds.get(vid + VIDEO_SUFFIX, "file") != "file":
                continue  # its video is a FIFO or device: counted above, never opened
            if vid + VIDEO_SUFFIX not in kinds:
                without_mp4.append(vid)
            found.append((folder / name, kinds.get(vid + AUTO_SUFFIX) == "file"))
    refs: dict[str, SavVideoRef] = {}
    for manual, has_auto in sorted(found):
        ref = _ref_for(root, manual, has_auto)
        if ref.video_id in refs:
            raise ValueError(
                f"video {ref.video_id} appears twice: {refs[ref.video_id].manual_path} and "
                f"{ref.manual_path}"
            )
        refs[ref.video_id] = ref
    return SavIndex(videos=[refs[k] for k in sorted(refs)],
                    skipped={k: sorted(v) for k, v in sorted(skipped.items())},
                    without_mp4=sorted(without_mp4))


def index_sav_root(root: str | Path) -> list[SavVideoRef]:
    """The videos of ``scan_sav_root``."""
    return scan_sav_root(root).videos


def find_video(root: str | Path, video_id: str) -> SavVideoRef:
    """One video of the root, found as ``scan_sav_root`` finds it (symlinks followed)."""
    index = scan_sav_root(root)
    for ref in index.videos:
        if ref.video_id == video_id:
            return ref
    extra = f" ({index.skipped_line()})" if index.skipped else ""
    raise FileNotFoundError(f"no {video_id}{MANUAL_SUFFIX} under {root}{extra}")


def _ref_for(root: Path, manual: Path, has_auto: bool | None = None) -> SavVideoRef:
    """``has_auto``: whether the folder's listing holds the ``_auto.json`` (else a stat)."""
    video_id = manual.name[: -len(MANUAL_SUFFIX)]
    folder = manual.parent
    auto = folder / f"{video_id}{AUTO_SUFFIX}"
    if has_auto is None:
        has_auto = auto.exists()
    return SavVideoRef(
        video_id=video_id,
        video_path=(folder / f"{video_id}{VIDEO_SUFFIX}").relative_to(root).as_posix(),
        manual_path=manual.relative_to(root).as_posix(),
        auto_path=auto.relative_to(root).as_posix() if has_auto else None,
    )
