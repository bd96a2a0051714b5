"""Where the benchmark and the review live inside a run's output folder.

Everything human-made sits under ``<out>/review/`` and ``<out>/benchmark/``, away from
``shards/``, so a pipeline re-run (which rewrites shards) never touches it.
"""

from __future__ import annotations

from pathlib import Path

BENCHMARK_DIR = "benchmark"
BENCHMARK_FILE = "benchmark.parquet"
REVIEW_DIR = "review"
DECISIONS_FILE = "decisions.sqlite"
MEDIA_DIR = "media"
VALIDATED_FILE = "validated.parquet"


def benchmark_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / BENCHMARK_DIR / BENCHMARK_FILE


def review_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / REVIEW_DIR


def decisions_path(out_dir: str | Path) -> Path:
    return review_dir(out_dir) / DECISIONS_FILE


def media_dir(out_dir: str | Path) -> Path:
    return review_dir(out_dir) / MEDIA_DIR


def validated_path(out_dir: str | Path) -> Path:
    return review_dir(out_dir) / VALIDATED_FILE
