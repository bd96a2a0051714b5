"""deploy/slurm/refsav.sbatch on a real Slurm (slurmctld + two slurmd + munge) on this machine.

The job runs offline (the reference server on the head instead of vLLM, CPU only) on a small
synthetic SA-V tree. One job runs straight through on two nodes (Ray head on the first, a Ray
worker started with srun on the second); another, on one node, hits its time limit mid-run,
stops on the USR1 Slurm sends before the limit, and a resubmission of the same command
finishes with rows identical to the straight run.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import config_for, content, write_config
from slurm_cluster import SlurmCluster, slurm_cluster

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.pipeline.plan import load_plan
from refsav_pipeline.pipeline.shards import ShardState, shard_states
from refsav_pipeline.records import read_rows
from refsav_pipeline.sav.synth import load_truth

# whole Slurm jobs, on a shared 2-core machine
pytestmark = [pytest.mark.timeout(1500), pytest.mark.slurm]

SBATCH = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "refsav.sbatch"
EX_TEMPFAIL = 75  # the job's exit code after a clean stop: resubmit to go on
SLOW_LATENCY_S = 4.0


def _fast_config() -> PipelineConfig:
    """One video per shard; endpoints are filled in by the job once its server is up."""
    cfg = config_for("http://127.0.0.1:9/v1", request_timeout_s=60.0)
    cfg.run.shard_size = 1
    return cfg


def _slow_config() -> PipelineConfig:
    """Same rows, but one masklet at a time and every answer ``SLOW_LATENCY_S`` late, so the
    11 masklets take minutes and shards finish one after another."""
    cfg = _fast_config()
    cfg.reference_server.latency_s = SLOW_LATENCY_S
    cfg.run.max_inflight_masklets = 1
    for role in ("captioner", "judge"):
        getattr(cfg.models, role).max_concurrency = 2
    return cfg


def _job_args(sav: Path, out: Path, config: Path) -> tuple[str, ...]:
    return ("--sav-root", str(sav), "--out", str(out), "--config", str(config), "--offline")


def _leftover_processes(job: int) -> list[str]:
    """Processes still running from the job's Ray instance (its temp dir is in every argv)."""
    res = subprocess.run(["pgrep", "-af", f"refsav-ray-{job}"], capture_output=True, text=True)
    return [ln for ln in res.stdout.splitlines() if "pgrep" not in ln]


def _done_shards(out: Path) -> int:
    if not (out / "plan.json").exists():
        return 0
    states = shard_states(out, load_plan(out))
    return sum(state is ShardState.done for state, _ in states.values())


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with slurm_cluster(tmp_path_factory.mktemp("slurm"), nodes=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def straight_run(slurm: SlurmCluster, synth_root: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    work = tmp_path_factory.mktemp("straight")
    cfg = write_config(_fast_config(), work / "cfg.yaml")
    out = work / "out"
    job = slurm.sbatch(SBATCH, *_job_args(synth_root, out, cfg),
                       options=("--nodes=2", "--exclusive", "--time=20"))
    end = slurm.wait(job)
    assert (end.state, end.exit_code) == ("COMPLETED", 0), slurm.job_log(job)
    return job, out


def test_offline_job_writes_every_row(slurm: SlurmCluster, straight_run: tuple[int, Path],
                                      synth_root: Path) -> None:
    job, out = straight_run
    log = slurm.job_log(job)
    assert f"job {job} on 2 node(s): node1 node2" in log
    assert "all 2 Ray nodes joined" in log
    assert "starting" in log and "refsav exited with 0" in log
    # each Ray node took the CPUs Slurm allocated on its node (the whole node: --exclusive)
    assert f"2 node(s), {2 * slurm.cpus_per_node} CPUs" in log
    assert (out / "slurm" / str(job) / "ray-worker-node2.log").exists()
    rows = read_rows(out).to_pylist()
    truth = load_truth(synth_root)
    assert {(r["video_id"], r["masklet_type"], r["masklet_id"]) for r in rows} == set(truth)
    for r in rows:
        t = truth[(r["video_id"], r["masklet_type"], r["masklet_id"])]
        assert r["status"] == "ok", r["error"]
        assert t.color in r["object_caption"] and t.color in r["scene_caption"]
    assert _done_shards(out) == len(load_plan(out).shards) == 4
    live = out / "slurm" / str(job) / "live.yaml"
    assert PipelineConfig.load(live).fingerprint() == _fast_config().fingerprint()
    assert _leftover_processes(job) == []


def test_time_limit_then_resubmit_gives_identical_rows(
        slurm: SlurmCluster, straight_run: tuple[int, Path], synth_root: Path,
        tmp_path: Path) -> None:
    slow, fast = _slow_config(), _fast_config()
    assert slow.fingerprint() == fast.fingerprint()  # latency/concurrency never change rows
    out = tmp_path / "out"
    slow_cfg = write_config(slow, tmp_path / "slow.yaml")
    job = slurm.sbatch(SBATCH, *_job_args(synth_root, out, slow_cfg),
                       options=("--nodes=1", "--exclusive", "--time=30",
                                "--signal=B:USR1@30"))
    # Once a shard is done, pull the time limit in to 1-2 minutes from now. Slurm checks limits
    # every 30 s and sends USR1 when at most 30 s + one check remain, so within 90 s: far
    # sooner than the 9 or so masklets left would take, and at least 30 s before the limit.
    deadline = time.monotonic() + 300
    while _done_shards(out) == 0:
        assert slurm.ended(job) is None, slurm.job_log(job)
        assert time.monotonic() < deadline, slurm.job_log(job)
        time.sleep(1)
    slurm.set_time_limit(job, slurm.elapsed_s(job) // 60 + 2)
    first = slurm.wait(job)
    log = slurm.job_log(job)
    assert (first.state, first.exit_code) == ("FAILED", EX_TEMPFAIL), log
    assert "got USR1: stopping cleanly" in log and "stopped before the time limit" in log
    assert 0 < _done_shards(out) < len(load_plan(out).shards), log
    assert _leftover_processes(job) == []

    fast_cfg = write_config(fast, tmp_path / "fast.yaml")
    again = slurm.sbatch(SBATCH, *_job_args(synth_root, out, fast_cfg),
                         options=("--nodes=1", "--exclusive", "--time=20"))
    second = slurm.wait(again)
    log = slurm.job_log(again)
    assert (second.state, second.exit_code) == ("COMPLETED", 0), log
    assert f"resuming {out}" in log
    assert content(read_rows(out)) == content(read_rows(straight_run[1]))
