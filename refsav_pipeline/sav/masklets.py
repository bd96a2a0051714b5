"""Reading one video's annotation files into masklets, in the spirit of SAM 2's sav_dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from refsav_pipeline.errors import RecordError
from refsav_pipeline.sav.index import SavVideoRef
from refsav_pipeline.sav.schema import ANNOTATION_STRIDE, SavAnnotation


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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError("bad_json", f"{path.name} is not valid JSON ({exc})",
                          video_id=video_id) from exc
    try:
        return SavAnnotation.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RecordError("bad_json", f"{path.name}: {loc}: {first['msg']}",
                          video_id=video_id) from exc


def masklets_of(ann: SavAnnotation, file_type: str) -> list[Masklet]:
    """The annotation's objects; ``masklet_type`` wins over the file name where present."""
    out = []
    for k, masklet_id in enumerate(ann.masklet_id):
        out.append(
            Masklet(
                video_id=ann.video_id,
                masklet_id=masklet_id,
                index=k,
                type=ann.masklet_type[k] if ann.masklet_type else file_type,
                size_bucket=ann.masklet_size_bucket[k] if ann.masklet_size_bucket else None,
                height=ann.height,
                width=ann.width,
                video_frame_count=ann.frame_count,
                rles=tuple({"size": list(f[k].size), "counts": f[k].counts} for f in ann.masklet),
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
