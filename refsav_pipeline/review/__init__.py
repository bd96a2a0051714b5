"""Benchmark selection and human review.

Public entry points for other parts: ``benchmark_video_ids`` (videos the training export
must drop) and ``load_validated`` (the reviewed benchmark for the Sa2VA export).
"""

from refsav_pipeline.review.export import ValidatedSample, load_validated
from refsav_pipeline.review.select import BenchmarkSample, benchmark_video_ids, load_benchmark

__all__ = ["BenchmarkSample", "ValidatedSample", "benchmark_video_ids", "load_benchmark",
           "load_validated"]
