"""Errors that belong to one record (a video or a masklet), never to the whole run.

Each carries a short machine-readable ``kind`` (counted by ``refsav status``) and a message that
names the video and, where known, the masklet, so a failed row explains itself.
"""

from __future__ import annotations


class RecordError(Exception):
    """A problem with one input record; the caller marks that record failed and goes on."""

    def __init__(self, kind: str, message: str, *, video_id: str | None = None,
                 masklet_id: int | None = None) -> None:
        where = ""
        if video_id is not None:
            where = f"video {video_id}"
            if masklet_id is not None:
                where += f" masklet {masklet_id}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.kind = kind
        self.video_id = video_id
        self.masklet_id = masklet_id


class InputError(Exception):
    """A mistake in what the user asked for (a wrong path, a folder that is not a run, no model
    server): the command stops before writing anything. The message says what to do instead.
    """
