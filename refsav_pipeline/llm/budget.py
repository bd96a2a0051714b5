"""Whether a request fits the model's context, counted before it is sent.

vLLM refuses a prompt longer than ``max_model_len`` and silently shortens the completion when
prompt + ``max_completion_tokens`` does not fit. Neither is acceptable for a dataset, so the
client counts an upper bound first and fails the row with the numbers instead:

- images as InternVL2 tiles them (dynamic tiling): the grid of 448 px tiles whose aspect ratio
  is closest to the image's, at most ``max_dynamic_patch`` tiles, plus a thumbnail tile when
  there is more than one; 256 tokens per tile, and ``<img>``/``</img>`` around each image;
- text at ``CHARS_PER_TOKEN`` UTF-8 bytes per token, below what Llama-3's and Qwen2's
  tokenizers average on English (~4), plus the chat template's role headers;
- the completion's full ``max_completion_tokens``.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, UnidentifiedImageError

from refsav_pipeline.llm.config import ModelEndpointConfig
from refsav_pipeline.llm.errors import ModelCallError

TILE_PX = 448
TOKENS_PER_TILE = 256  # (448 / 14)² patches, pixel-shuffled 2×2
IMAGE_WRAP_TOKENS = 2  # <img> … </img>
DEFAULT_MAX_DYNAMIC_PATCH = 12  # InternVL2 checkpoints' config.json
CHARS_PER_TOKEN = 3
TEMPLATE_TOKENS_PER_MESSAGE = 8  # role header and end-of-turn tokens
TEMPLATE_TOKENS = 16  # begin-of-text and the assistant header the reply starts from


@lru_cache(maxsize=64)
def _grids(max_num: int, min_num: int) -> tuple[tuple[int, int], ...]:
    return tuple(sorted({(i, j) for n in range(min_num, max_num + 1)
                         for i in range(1, n + 1) for j in range(1, n + 1)
                         if min_num <= i * j <= max_num}, key=lambda r: (r[0] * r[1], r)))


def internvl_grid(width: int, height: int, max_num: int, min_num: int = 1) -> tuple[int, int]:
    """InternVL's ``dynamic_preprocess`` grid (columns, rows) for an image of this size."""
    ratios = _grids(max_num, min_num)
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for r in ratios:
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best, best_diff = r, diff
        elif diff == best_diff and area > 0.5 * TILE_PX * TILE_PX * r[0] * r[1]:
            best = r
    return best


@lru_cache(maxsize=4096)  # a run renders few distinct image sizes
def image_tokens(width: int, height: int, max_dynamic_patch: int,
                 use_thumbnail: bool = True) -> int:
    """Visual tokens InternVL2 spends on one image (tiles × 256, with the thumbnail)."""
    cols, rows = internvl_grid(width, height, max_dynamic_patch)
    tiles = cols * rows
    if use_thumbnail and tiles > 1:
        tiles += 1
    return tiles * TOKENS_PER_TILE + IMAGE_WRAP_TOKENS


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF})


def _sof_size(jpeg: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, or None if the markers before it
    do not parse. Walks segment lengths only: a few µs, where ``Image.open`` parses every
    table (a fifth of the caption actor's CPU per request when it was used here)."""
    if jpeg[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(jpeg)
    while i + 4 <= n:
        if jpeg[i] != 0xFF:
            return None
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers: no length
            i += 2
            continue
        (length,) = struct.unpack_from(">H", jpeg, i + 2)
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = struct.unpack_from(">HH", jpeg, i + 5)
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA) or length < 2:  # end of image or scan data before any SOF
            return None
        i += 2 + length
    return None


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG header (no pixel decoding); PIL decides anything the
    marker walk does not (and raises for what is not an image)."""
    size = _sof_size(jpeg)
    if size is not None:
        return size
    with Image.open(io.BytesIO(jpeg)) as im:
        return im.size


@dataclass(frozen=True)
class RequestBudget:
    """Upper bound of one request's tokens, against the model's context."""

    image_tokens: int
    text_tokens: int
    completion_tokens: int
    max_model_len: int

    @property
    def prompt_tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def fits(self) -> bool:
        return self.total <= self.max_model_len

    def describe(self) -> str:
        return (f"{self.image_tokens} image + {self.text_tokens} text tokens (estimated upper "
                f"bound) + max_completion_tokens {self.completion_tokens} = {self.total} > "
                f"max_model_len {self.max_model_len}" if not self.fits else
                f"{self.total} of {self.max_model_len} tokens")


def request_budget(texts: Sequence[str], image_sizes: Sequence[tuple[int, int]], *,
                   max_dynamic_patch: int, completion_tokens: int,
                   max_model_len: int) -> RequestBudget:
    """The budget of a chat request with these message texts and images."""
    img = sum(image_tokens(w, h, max_dynamic_patch) for w, h in image_sizes)
    txt = (sum(text_tokens(t) + TEMPLATE_TOKENS_PER_MESSAGE for t in texts) + TEMPLATE_TOKENS)
    return RequestBudget(img, txt, completion_tokens, max_model_len)


def budget_for(model: ModelEndpointConfig, texts: Sequence[str], images: Sequence[bytes],
               sampling: dict[str, Any], mm_kwargs: dict[str, Any]) -> RequestBudget:
    """The budget of a request to ``model``, as the session sends it.

    ``max_dynamic_patch`` comes from the request, else the server's default kwargs, else the
    checkpoint's default.
    """
    patches = int(mm_kwargs.get("max_dynamic_patch")
                  or (model.vllm.mm_processor_kwargs or {}).get("max_dynamic_patch")
                  or DEFAULT_MAX_DYNAMIC_PATCH)
    completion = int(sampling.get("max_completion_tokens") or sampling.get("max_tokens") or 0)
    return request_budget(texts, [jpeg_size(j) for j in images], max_dynamic_patch=patches,
                          completion_tokens=completion, max_model_len=model.vllm.max_model_len)


def check_fits(model: ModelEndpointConfig, prompt_ref: str, texts: Sequence[str | None],
               images: Sequence[bytes], sampling: dict[str, Any],
               mm_kwargs: dict[str, Any]) -> RequestBudget:
    """``budget_for``, raising ``ModelCallError(kind="request_too_long")`` if it does not fit."""
    try:
        b = budget_for(model, [t for t in texts if t], images, sampling, mm_kwargs)
    except (UnidentifiedImageError, OSError) as e:
        raise ModelCallError(f"{prompt_ref}: unreadable JPEG: {e}", kind="bad_image",
                             model=model.model) from e
    if not b.fits:
        raise ModelCallError(f"{prompt_ref} request does not fit {model.name}: {b.describe()}",
                             kind="request_too_long", model=model.model)
    return b
