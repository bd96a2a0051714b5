"""Shared fixtures: the real SA-V annotation kept in tests/data/sa-v, small synthetic SA-V
samples, and a local Ray instance per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from refsav_pipeline.sav.synth import synth_sav

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_SAV_DIR = PROJECT_ROOT / "tests" / "data" / "sa-v"
REAL_SAV_JSON = REAL_SAV_DIR / "sav_000001_manual.json"


@pytest.fixture(scope="session")
def real_sav_dir() -> Path:
    assert REAL_SAV_JSON.is_file(), f"missing the real SA-V fixture at {REAL_SAV_JSON}"
    return REAL_SAV_DIR


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic videos (read-only for tests: copy before corrupting anything)."""
    root = tmp_path_factory.mktemp("sav")
    synth_sav(root, videos=4, seed=0)
    return root


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic videos for the tests that run `refsav` as a process (kill, outage,
    operations); a module may define its own ``sample`` instead."""
    root = tmp_path_factory.mktemp("sav8")
    synth_sav(root, videos=8, seed=5)
    return root


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A new local Ray instance (never a stale `ray start` or $RAY_ADDRESS), as `refsav run`."""
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, logging_level="WARNING")
    yield
    ray.shutdown()
