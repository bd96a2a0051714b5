"""Benchmark selection and human review.

Public entry points for other parts: ``benchmark_video_ids`` (videos the training export
must drop) and ``load_validated`` (the reviewed benchmark for the Sa2VA export). They are
imported on first use (PEP 562), so importing ``review.paths`` for the CLI costs no pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"ValidatedSample": "export", "load_validated": "export", "BenchmarkSample": "select",
         "benchmark_video_ids": "select", "load_benchmark": "select"}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
