"""At the start of every run and resume: promote what dead cache writers left on each node.

Caption actors stage their request-cache shards on node-local disk (``llm/cache.py``). A writer
killed before its last promotion (kill -9 of an actor, of the driver, or the end of a Slurm
job) leaves answers only on its node. One small task per alive node, pinned there
(``NodeAffinitySchedulingStrategy``, not soft), promotes every local shard of this run whose
lock it can take and deletes it, before any caption actor loads the shared cache, so a resumed
run repeats none of those calls. A node that is gone takes its unpromoted answers with it:
those calls are made again and the rows stay the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from refsav_pipeline.llm.cache import OrphanReport, promote_orphans
from refsav_pipeline.llm.config import ClientConfig
from refsav_pipeline.llm.session import cache_folder

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_retries=0)
def _promote_on_node(shared: str, local_dir: str | None) -> OrphanReport:
    return promote_orphans(shared, local_dir)


def promote_on_every_node(client: ClientConfig, out_dir: str | Path) -> list[OrphanReport]:
    """Run ``promote_orphans`` once on every alive Ray node; returns what each node did.
    Needs an initialised Ray. Nothing to do without a cache or without staging."""
    shared = cache_folder(client, out_dir)
    if shared is None or client.cache_local_dir == "":
        return []
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [_promote_on_node.options(  # type: ignore[attr-defined]
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(str(shared), client.cache_local_dir) for node_id in nodes]
    reports = []
    for node_id, ref in zip(nodes, refs, strict=True):
        try:
            reports.append(ray.get(ref))
        except ray.exceptions.RayError as e:  # a node lost meanwhile: its calls are made again
            log.warning("could not promote the request-cache leftovers on node %s: %s",
                        node_id, e)
    return reports
