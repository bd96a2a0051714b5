"""Reading COCO compressed RLE counts without trusting them.

pycocotools' decoder writes every run it reads into an H*W buffer, so counts whose runs add up
to more than H*W write past the mask (a crash, or worse, in a worker), and counts with a
dangling continuation read past the string. ``rle_pixel_counts`` reads the same format (6-bit
characters from '0', continuation bit 0x20, sign bit 0x10 on the last character, runs from
the third on stored as the difference to the run two before) for many RLEs at once with
numpy, so a masklet's RLEs can be checked before pycocotools decodes them.
"""

from __future__ import annotations

import numpy as np

MAX_CHARS_PER_RUN = 7
"""35 bits: more than any run of a 32-bit count needs (pycocotools stores runs as uint32)."""


def rle_pixel_counts(counts: list[str]) -> np.ndarray:
    """Pixels covered by each RLE's runs (their sum, which must be H*W), or -1 if malformed:
    a number running past its RLE's end, a run over ``MAX_CHARS_PER_RUN`` characters, or a
    negative run or one over 2^32 - 1. ``counts`` must be ASCII (``Rle`` checks the
    alphabet)."""
    n = len(counts)
    out = np.full(n, -1, dtype=np.int64)
    lens = np.fromiter((len(c) for c in counts), dtype=np.int64, count=n)
    out[lens == 0] = 0
    b = np.frombuffer("".join(counts).encode("ascii"), np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return out
    rle_of = np.repeat(np.arange(n), lens)
    bad = np.zeros(n, dtype=bool)
    last = (np.cumsum(lens) - 1)[lens > 0]
    bad[rle_of[last]] = (b[last] & 0x20) != 0  # its last number never ends
    is_end = (b & 0x20) == 0
    is_end[last] = True  # numbers end with their RLE
    ends = np.flatnonzero(is_end)
    starts = np.concatenate(([0], ends[:-1] + 1))
    tok_len = ends - starts + 1
    tok_rle = rle_of[ends]
    bad[tok_rle[tok_len > MAX_CHARS_PER_RUN]] = True
    shift = 5 * np.minimum(np.arange(b.size) - np.repeat(starts, tok_len), MAX_CHARS_PER_RUN)
    vals = np.add.reduceat((b & 0x1F) << shift, starts)
    sign = (b[ends] & 0x10) != 0
    vals = np.where(sign, vals - (np.int64(1) << (5 * np.minimum(tok_len, MAX_CHARS_PER_RUN))),
                    vals)
    # runs[i] = vals[i] + runs[i - 2] for i >= 3: a running sum per RLE over odd positions,
    # and over even positions from 2 on (position 0 stands alone)
    idx = np.arange(ends.size) - np.searchsorted(tok_rle, tok_rle, side="left")
    group = np.where(idx == 0, 2 * n + np.arange(ends.size), 2 * tok_rle + (idx & 1))
    order = np.argsort(group, kind="stable")
    v, g = vals[order], group[order]
    total = np.cumsum(v)
    first = np.maximum.accumulate(
        np.where(np.concatenate(([True], g[1:] != g[:-1])), np.arange(g.size), 0))
    runs = np.empty_like(v)
    runs[order] = total - total[first] + v[first]
    bad[tok_rle[(runs < 0) | (runs > 2**32 - 1)]] = True
    has_runs = np.bincount(tok_rle, minlength=n) > 0
    sums = np.bincount(tok_rle, weights=runs, minlength=n)
    out[has_runs] = sums[has_runs].astype(np.int64)
    out[bad] = -1
    return out
