"""The Ray instance a run uses: a new local one by default, or a cluster by address."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray
from rich.console import Console

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline import interrupts
from refsav_pipeline.pipeline.lifeline import Lifeline


@contextmanager
def ray_session(address: str | None, cfg: PipelineConfig,
                console: Console | None = None) -> Iterator[None]:
    """A local Ray instance by default, or the cluster at ``address``; shut down on exit."""
    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True,
                              "configure_logging": True}
    lifeline: Lifeline | None = None
    if address:
        ray.init(address=address, **kwargs)
    else:
        lifeline = Lifeline()  # this instance dies with the driver, even on kill -9
        # Ray's notice that a new local instance uses token auth (its default) is not for
        # our users: nothing to act on, on every run
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR)
        # "local": always a new instance, never a stale `ray start` or $RAY_ADDRESS
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=cfg.run.object_store_memory_mb * 1024 * 1024, **kwargs)
        ctx = ray.get_runtime_context()
        lifeline.watch(os.path.join(ctx.get_temp_dir(), ctx.get_session_name()))
    interrupts.reassert()  # Ray's SIGTERM handler dumps a C++ stack; ours says what to do
    if console is not None:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = int(ray.cluster_resources().get("CPU", 0))
        where = f"Ray cluster at {address}" if address else "local Ray instance"
        console.print(f"{where}: {len(nodes)} node(s), {cpus} CPUs")
    try:
        yield
    finally:
        ray.shutdown()
        if lifeline is not None:
            lifeline.release()
