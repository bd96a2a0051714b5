"""The Ray side of the two stages: the CPU-stage task that renders one video, and the async
caption actors that hold the model sessions.

The driver stays off the data path: a CPU-stage task puts each masklet's images in Ray's object
store and returns references; the caption actor receives the reference and Ray moves the bytes
(node to node, or not at all on one node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict
from ray.exceptions import GetTimeoutError, RayError

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.cache import working_on
from refsav_pipeline.llm.client import Outage
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.llm.telemetry import SessionFigures
from refsav_pipeline.pipeline.captions import caption_masklet, recaption_distinct
from refsav_pipeline.pipeline.prepare import MaskletJob, MaskletKey, prepare_video_within
from refsav_pipeline.records import RefSavRow
from refsav_pipeline.sav.index import SavVideoRef

log = logging.getLogger(__name__)

ACTOR_CLOSE_TIMEOUT_S = 30.0
"""How long the driver waits for the caption actors' last promotion when the run ends."""


class PreparedRefs(BaseModel):
    """What a CPU-stage task hands the driver: references to the images, never the images."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    video_id: str
    jobs: list[tuple[MaskletKey, Any]]  # (key, ObjectRef of its MaskletJob)
    failed: list[RefSavRow]
    frames_decoded: int = 0
    frames_needed: int = 0
    cpu_s: float = 0.0


@ray.remote(max_retries=3)
def prepare_remote(sav_root: str, ref: SavVideoRef, cfg: PipelineConfig, fingerprint: str,
                    only: set[MaskletKey] | None) -> PreparedRefs:
    pv = prepare_video_within(sav_root, ref, cfg, fingerprint, only)
    return PreparedRefs(video_id=pv.video_id, jobs=[(j.key, ray.put(j)) for j in pv.jobs],
                        failed=pv.failed, frames_decoded=pv.frames_decoded,
                        frames_needed=pv.frames_needed, cpu_s=pv.cpu_s)


class ActorStatus(BaseModel):
    in_flight: dict[str, int]
    outages: list[Outage]
    figures: SessionFigures | None = None  # for the run's metrics (pipeline/metrics.py)


@ray.remote(max_restarts=-1, max_task_retries=-1, concurrency_groups={"health": 1})
class CaptionActor:
    """Holds one ModelSession (HTTP pools, its own request-cache files); captions masklets
    concurrently. Ray resolves the job references before ``caption`` runs."""

    def __init__(self, cfg: PipelineConfig, out_dir: str) -> None:
        self.session = ModelSession.from_config(cfg, out_dir)
        self._cpu0 = time.process_time()

    async def caption(self, *jobs: MaskletJob) -> list[RefSavRow]:
        async with self._holding(*{j.base["video_id"] for j in jobs}):
            return list(await asyncio.gather(*(self._caption(j) for j in jobs)))

    async def _caption(self, job: MaskletJob) -> RefSavRow:
        with working_on(job.base["video_id"]):
            return await caption_masklet(self.session, job)

    async def recaption(self, job: MaskletJob, row: RefSavRow, others: list[str],
                        round_: int) -> RefSavRow:
        """The contrastive video caption of one near-duplicate row (``pipeline.uniqueness``),
        cached in its video's partition like the row's other calls."""
        video = job.base["video_id"]
        async with self._holding(video):
            with working_on(video):
                return await recaption_distinct(self.session, job, row, others, round_)

    @contextlib.asynccontextmanager
    async def _holding(self, *videos: str) -> AsyncIterator[None]:
        """Hold ``videos``' request-cache partitions meanwhile (read once off the event loop;
        dropped when no call holds them any more)."""
        cache = self.session.cache
        if cache is None:
            yield
            return
        ordered = sorted(videos)
        await asyncio.to_thread(cache.acquire, *ordered)
        try:
            yield
        finally:
            cache.release(*ordered)

    async def stats(self) -> dict[str, Any]:
        """Session stats, and this process's CPU seconds since it was set up."""
        return {**self.session.stats(), "actor_cpu_s": time.process_time() - self._cpu0}

    @ray.method(concurrency_group="health")  # answers while every caption slot waits
    async def status(self) -> ActorStatus:
        """What the progress line shows (requests in flight per model, outages) and the
        session's figures the driver serves as metrics."""
        return ActorStatus(in_flight=self.session.in_flight(), outages=self.session.outages(),
                           figures=self.session.figures())

    async def close(self) -> None:
        await self.session.aclose()
        if self.session.cache is not None:
            self.session.cache.close()



@contextmanager
def caption_actors(cfg: PipelineConfig, out_dir: Path) -> Iterator[list[Any]]:
    """The run's caption actors, closed however the run ends (done, stopped, Ctrl-C, Slurm's
    signal before its time limit), so each one's last request-cache answers are promoted from
    its node's local disk to ``<out>/cache/`` before Ray takes the actors down."""
    actors = start_actors(cfg, out_dir)
    try:
        yield actors
    finally:
        close_actors(actors)


def close_actors(actors: list[Any], timeout_s: float = ACTOR_CLOSE_TIMEOUT_S) -> None:
    """Ask every actor to close (bounded: a stuck one must not hold the driver), then kill."""
    try:
        ray.get([a.close.remote() for a in actors], timeout=timeout_s)
    except (RayError, GetTimeoutError) as exc:
        log.warning("caption actors did not all close (%s); their unpromoted request-cache "
                    "answers stay on local disk until the next run promotes them", exc)
    for a in actors:
        ray.kill(a)


def actor_config(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with each endpoint's concurrency split over the actors (``client.concurrency.
    split``): a pinned ``max_concurrency`` is divided, so an endpoint never sees more from the
    whole run; with ``auto`` each actor starts from its share and adapts it."""
    split = cfg.client.concurrency.model_copy(update={"split": cfg.run.model_actors})
    return cfg.model_copy(update={"client": cfg.client.model_copy(update={"concurrency": split})})


def start_actors(cfg: PipelineConfig, out_dir: Path) -> list[Any]:
    """Caption actors spread over the cluster's nodes (best effort: one node is fine too)."""
    acfg = actor_config(cfg)
    return [CaptionActor.options(  # type: ignore[attr-defined]
        max_concurrency=cfg.run.max_inflight_masklets + 4, num_cpus=0,
        scheduling_strategy="SPREAD",
    ).remote(acfg, str(out_dir)) for _ in range(cfg.run.model_actors)]

