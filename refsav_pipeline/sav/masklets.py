"""Reading one video's annotation files into masklets, in the spirit of SAM 2's sav_dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from refsav_pipeline.errors import RecordError
from refsav_pipeline.sav.index import SavVideoRef
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE, SavAnnotation, first_problem


class Masklet(BaseModel):
    """One object tracked through a video: its RLE per annotated frame (6 fps)."""

    model_config = ConfigDict(frozen=True)

    video_id: str
    masklet_id: int
    index: int  # position in the inner ``masklet`` list: Sa2VA's Ref-SAV.json keys objects by it
    type: str
    size_bucket: str | None
    height: int
    width: int
    video_frame_count: int
    rles: tuple[dict[str, Any], ...]  # COCO RLE dicts, ``counts`` as str
    problem: str | None = None  # why this object's entries are unusable (then ``rles`` is empty)

    def check(self) -> None:
        """Raise the object's read-time problem as a ``bad_json`` record error."""
        if self.problem is not None:
            raise RecordError("bad_json", f"{self.type} annotation: {self.problem}",
                              video_id=self.video_id, masklet_id=self.masklet_id)

    @staticmethod
    def video_frame(annotated_frame: int) -> int:
        return annotated_frame * ANNOTATION_STRIDE


def load_annotation(path: str | Path, video_id: str | None = None) -> SavAnnotation:
    """Parse one SA-V JSON; any problem becomes a ``RecordError`` naming the video."""
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise RecordError("missing_json", f"{path} not found", video_id=video_id) from exc
    except OSError as exc:
        raise RecordError("bad_json", f"{path.name} cannot be read ({exc})",
                          video_id=video_id) from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        raise RecordError("bad_json", f"{path.name} is not valid JSON ({exc})",
                          video_id=video_id) from exc
    try:
        return SavAnnotation.model_validate(raw)
    except ValidationError as exc:
        raise RecordError("bad_json", f"{path.name}: {first_problem(exc)}",
                          video_id=video_id) from exc


def unusable_id(index: int) -> int:
    """The ``masklet_id`` of the object at ``index`` when its own id is unusable: negative,
    so it never meets a real id, below -1 (a whole file), and one per position, so a retry
    redoes just that object (``prepare_video`` also matches it after the file is fixed)."""
    return -2 - index


def masklets_of(ann: SavAnnotation, file_type: str) -> list[Masklet]:
    """The annotation's objects, one per position in the inner ``masklet`` lists.

    An object whose entries are unusable is still returned, with its ``problem`` set (and
    ``masklet_id`` = ``unusable_id(index)`` if the id itself is bad), so callers can index by
    position and the pipeline can give it a failed row; ``Masklet.check`` raises it.
    """
    out = []
    seen: set[int] = set()
    for k in range(ann.masklet_num):
        problem = ann.masklet_problem(k, file_type, seen)
        raw_id = ann.masklet_id[k]
        ok_id = problem is None or not problem.startswith("masklet_id")
        out.append(
            Masklet(
                video_id=ann.video_id,
                masklet_id=raw_id if ok_id else unusable_id(k),
                index=k,
                type=file_type,
                size_bucket=ann.masklet_size_bucket[k] if ann.masklet_size_bucket and
                problem is None else None,
                height=ann.height,
                width=ann.width,
                video_frame_count=ann.frame_count,
                rles=() if problem else
                tuple({"size": list(f[k].size), "counts": f[k].counts} for f in ann.masklet),
                problem=problem,
            )
        )
    return out


def read_video_masklets(
    root: str | Path, ref: SavVideoRef, types: list[str] | tuple[str, ...] = ("manual", "auto")
) -> list[Masklet]:
    """Masklets of the requested types, manual first, in file order."""
    out: list[Masklet] = []
    for file_type, rel in ref.annotation_paths().items():
        if file_type not in types:
            continue
        ann = load_annotation(Path(root) / rel, ref.video_id)
        if ann.video_id != ref.video_id:
            raise RecordError("bad_json", f"{rel} says video_id={ann.video_id!r}",
                              video_id=ref.video_id)
        out.extend(masklets_of(ann, file_type))
    return out
