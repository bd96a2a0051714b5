"""The SA-V annotation JSON (``{video_id}_manual.json`` / ``_auto.json``) as a pydantic model.

Types follow the real files, not the README: frame counts and sizes are floats, the environment
may be a string or a list, manual stability scores are ``None``s and auto ones are per-frame
lists. Only ``masklet`` and the per-object lists are needed downstream; other keys are kept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ANNOTATION_STRIDE = 4
"""SA-V masks are annotated at 6 fps on 24 fps video: annotated frame f is video frame 4*f."""


class Rle(BaseModel):
    """COCO compressed RLE, as pycocotools writes it."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[int, int]
    counts: str

    def as_coco(self) -> dict[str, Any]:
        return {"size": list(self.size), "counts": self.counts.encode()}


class SavAnnotation(BaseModel):
    model_config = ConfigDict(extra="allow")

    video_id: str
    video_duration: float | None = None
    video_frame_count: float
    video_height: float
    video_width: float
    video_resolution: float | None = None
    video_environment: str | list[str] | None = None
    video_split: str | None = None
    masklet: list[list[Rle]]
    masklet_id: list[int]
    masklet_size_rel: list[float] | None = None
    masklet_size_abs: list[float] | None = None
    masklet_size_bucket: list[str] | None = None
    masklet_visibility_changes: list[int] | None = None
    masklet_first_appeared_frame: list[float] | None = None
    masklet_frame_count: list[int] | None = None
    masklet_edited_frame_count: list[int] | None = None
    masklet_type: list[str] | None = None
    masklet_stability_score: list[Any] | None = None
    masklet_num: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent_lengths(self) -> SavAnnotation:
        n = self.masklet_num
        if len(self.masklet_id) != n:
            raise ValueError(f"masklet_id has {len(self.masklet_id)} entries, masklet_num is {n}")
        for f, row in enumerate(self.masklet):
            if len(row) != n:
                raise ValueError(f"masklet[{f}] has {len(row)} objects, masklet_num is {n}")
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
