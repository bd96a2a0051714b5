"""A JPEG that carries its sha256, computed once where the image is made (the CPU stage).

The request cache keys every call by the sha256 of its images. Hashing them again on every
call cost the caption actor a tenth of its CPU per request, on its one event loop; the CPU
stage hashes each image once instead, in parallel tasks. ``Jpeg`` is ``bytes`` (every
consumer of image bytes takes it unchanged) with the digest attached, and it pickles with
it, so the digest travels through Ray's object store with the image.
"""

from __future__ import annotations

import hashlib
from typing import Any


class Jpeg(bytes):
    """JPEG bytes and their sha256 (hex)."""

    sha256: str

    def __new__(cls, data: bytes, sha256: str | None = None) -> Jpeg:
        self = super().__new__(cls, data)
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Jpeg, (bytes(self), self.sha256))


def image_digest(image: bytes) -> str:
    """The sha256 of an image: the one it carries, or computed now (plain ``bytes``)."""
    digest = getattr(image, "sha256", None)
    return digest if isinstance(digest, str) else hashlib.sha256(image).hexdigest()


def is_jpeg(data: bytes) -> bool:
    return data.startswith(b"\xff\xd8")
