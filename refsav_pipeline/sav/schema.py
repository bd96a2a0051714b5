"""The SA-V annotation JSON (``{video_id}_manual.json`` / ``_auto.json``) as a pydantic model.

Types follow the real files, not the README: frame counts and sizes are floats, the environment
may be a string or a list, manual stability scores are ``None``s and auto ones are per-frame
lists.

Validation happens here, at read time, so nothing in a file can stop a run later (an ``inf``
frame count overflowing ``int``, a 10^12 one overflowing a Parquet int32 column):
- the file-level numbers the pipeline uses (frame count, height, width, ``masklet_num``) must
  be finite whole numbers in range, and the file may not have more annotated frames than its
  video has frames at 6 fps;
- the per-object entries (``masklet_id``, ``masklet_type``, ``masklet_size_bucket``, RLEs) are
  checked per object by ``masklet_problem``, so one bad object fails only its own row;
- keys the pipeline never reads are kept as they are and never fail a file.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

ANNOTATION_STRIDE = 4
"""SA-V masks are annotated at 6 fps on 24 fps video: annotated frame f is video frame 4*f."""

MAX_VIDEO_FRAMES = 1_000_000
"""About 11.5 hours at 24 fps; SA-V videos last seconds to minutes."""
MAX_SIDE = 16_384
INT32_MAX = 2**31 - 1
"""Masklet ids are stored as Parquet int32; -1 is reserved for a row about a whole file."""

_RLE_COUNTS = re.compile(r"[0-o]*")
"""pycocotools' compressed counts use the 64 characters '0' (48) to 'o' (111)."""


def _whole_in(low: int, high: int):  # noqa: ANN202 (a pydantic after-validator)
    def check(v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"{v} is not a finite number")
        if v != int(v):
            raise ValueError(f"{v} is not a whole number")
        if not low <= v <= high:
            raise ValueError(f"{v:.0f} is outside [{low}, {high}]")
        return v
    return AfterValidator(check)


FrameCount = Annotated[StrictFloat | StrictInt, _whole_in(1, MAX_VIDEO_FRAMES)]
Side = Annotated[StrictFloat | StrictInt, _whole_in(1, MAX_SIDE)]
MaskletId = Annotated[StrictInt, Field(ge=0, le=INT32_MAX)]
_MASKLET_ID = TypeAdapter(MaskletId)


def _counts(v: str) -> str:
    """What pycocotools' parser needs to stay inside the string and its own buffer: a number
    that never ends (last character >= 'P', the continuation bit) makes it read past the end
    of the string and write past its array (heap corruption), whatever it is asked for."""
    if _RLE_COUNTS.fullmatch(v) is None:
        raise ValueError("counts holds characters outside pycocotools' alphabet '0'..'o'")
    if v and v[-1] >= "P":
        raise ValueError("counts end inside a number (the last character has the "
                         "continuation bit)")
    return v


class Rle(BaseModel):
    """COCO compressed RLE, as pycocotools writes it."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[Annotated[StrictInt, Field(ge=0)], Annotated[StrictInt, Field(ge=0)]]
    counts: Annotated[str, Field(strict=True), AfterValidator(_counts)]

    def as_coco(self) -> dict[str, Any]:
        return {"size": list(self.size), "counts": self.counts.encode()}


MaybeRle = Annotated[Rle | Any, Field(union_mode="left_to_right")]
"""An RLE as an ``Rle`` when it is one, else the raw value (reported per object later)."""


class SavAnnotation(BaseModel):
    model_config = ConfigDict(extra="allow")

    video_id: Annotated[str, Field(strict=True, min_length=1)]
    video_frame_count: FrameCount
    video_height: Side
    video_width: Side
    masklet: list[list[MaybeRle]]
    masklet_id: list[Any]
    masklet_size_bucket: list[Any] | None = None
    masklet_type: list[Any] | None = None
    masklet_num: Annotated[StrictInt, Field(ge=0)]

    @model_validator(mode="after")
    def _consistent_lengths(self) -> SavAnnotation:
        n = self.masklet_num
        for name in ("masklet_id", "masklet_size_bucket", "masklet_type"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries, masklet_num is {n}")
        for f, row in enumerate(self.masklet):
            if len(row) != n:
                raise ValueError(f"masklet[{f}] has {len(row)} objects, masklet_num is {n}")
        most = math.ceil(self.video_frame_count / ANNOTATION_STRIDE)
        if len(self.masklet) > most:
            raise ValueError(
                f"masklet has {len(self.masklet)} annotated frames, but a video of "
                f"video_frame_count {self.frame_count} has at most {most} at 6 fps")
        return self

    @property
    def height(self) -> int:
        return int(self.video_height)

    @property
    def width(self) -> int:
        return int(self.video_width)

    @property
    def frame_count(self) -> int:
        return int(self.video_frame_count)

    def masklet_problem(self, k: int, file_type: str, seen_ids: set[int]) -> str | None:
        """Why object ``k`` cannot be used (naming the field), or ``None``; ``seen_ids`` holds
        the ids of the objects before it, for duplicates, and gets this one's id."""
        try:
            masklet_id = _MASKLET_ID.validate_python(self.masklet_id[k])
        except ValidationError as exc:
            return f"masklet_id[{k}]: {first_problem(exc)}"
        if masklet_id in seen_ids:
            return f"masklet_id[{k}]: {masklet_id} repeats an earlier object's id"
        seen_ids.add(masklet_id)
        if self.masklet_type is not None and self.masklet_type[k] != file_type:
            return (f"masklet_type[{k}]: {_short(self.masklet_type[k])}, in a {file_type} "
                    f"annotation file that should be {file_type!r}")
        if self.masklet_size_bucket is not None and \
                not isinstance(self.masklet_size_bucket[k], str | None):
            return f"masklet_size_bucket[{k}]: {_short(self.masklet_size_bucket[k])} is not text"
        for f, row in enumerate(self.masklet):
            if not isinstance(row[k], Rle):
                try:
                    Rle.model_validate(row[k])
                except ValidationError as exc:
                    return f"masklet[{f}][{k}]: {first_problem(exc)}"
        return None


_UNION_TAGS = {"float", "int", "str", "Rle", "any"}
"""Names pydantic puts in an error's location for the member of a union: not field names."""


def first_problem(exc: ValidationError) -> str:
    """The first problem of a validation error as ``field: message``."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p not in _UNION_TAGS)
    return f"{loc}: {first['msg']}" if loc else first["msg"]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
