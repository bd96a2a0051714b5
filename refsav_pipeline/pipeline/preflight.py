"""Checks made before a run plans or starts anything: is the SA-V root real, are the models up.

A wrong ``--sav-root`` or a model server that is not running is the user's mistake, not a
record's: it must stop the command at once with the fix (exit 2), not turn into a run where
every row fails, nor tie ``--out`` to an empty root.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import InputError
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.sav.index import SavVideoRef, scan_sav_root

SAV_ROOT_FIX = ("pass the folder that holds sav_train/ (or the <video>_manual.json files) as "
                "--sav-root")


def check_sav_root(root: Path, fix: str = SAV_ROOT_FIX) -> list[SavVideoRef]:
    """The videos under ``root``; an ``InputError`` (ending with ``fix``) if it is missing, a
    file, or has no video (no annotation, or no mp4 beside any). Videos without their mp4 are
    named in a warning and stay in the plan: their rows fail as ``video_missing``."""
    if not root.exists():
        raise InputError(f"SA-V root {root} does not exist: {fix}")
    if not root.is_dir():
        raise InputError(f"SA-V root {root} is a file, not a folder: {fix}")
    try:
        index = scan_sav_root(root)
    except (OSError, ValueError) as exc:
        raise InputError(f"SA-V root {root}: {exc}") from exc
    videos = index.videos
    if index.skipped:
        typer.echo(f"warning: {index.skipped_line()}", err=True)
    if not videos:
        raise InputError(f"SA-V root {root} holds no video (no *_manual.json under it): "
                         f"{fix}")
    missing = index.without_mp4
    if len(missing) == len(videos):
        raise InputError(f"SA-V root {root} holds {len(videos)} annotation file(s) but no "
                         f"video: no <video>.mp4 next to any *_manual.json (e.g. "
                         f"{videos[0].video_path}): {fix}")
    if missing:
        more = ", …" if len(missing) > 3 else ""
        typer.echo(f"warning: {len(missing)} of {len(videos)} videos have no .mp4 next to "
                   f"their annotations ({', '.join(missing[:3])}{more}): their rows will fail "
                   "as video_missing", err=True)
    return videos


def check_models(cfg: PipelineConfig, config_path: Path | None = None,
                 run_out: Path | None = None) -> None:
    """Probe every endpoint of every model (``GET /v1/models``); an ``InputError`` naming the
    URLs and the fix if none of a model's endpoints answers with that model. The fix starts
    from what the user did: the config they passed (``config_path``), or the run's own
    (``run_out``, a resume without ``--config``), or none (the built-in defaults)."""
    session = ModelSession(cfg.models, cfg.client.model_copy(update={"cache": False}))
    llm_log = logging.getLogger("refsav_pipeline.llm")
    level = llm_log.level
    llm_log.setLevel(logging.ERROR)  # the answer below says it once, not per endpoint
    try:
        health = session.run(session.check_health())
    finally:
        session.close()
        llm_log.setLevel(level)
    for role, endpoints in health.items():
        if any(ep["healthy"] for ep in endpoints):
            continue
        model = session.model_cfg(role)  # type: ignore[arg-type]
        urls = ", ".join(ep["url"] for ep in endpoints)
        raise InputError(f"no endpoint of the {role} model {model.name} answers at {urls} "
                         f"(GET /models): {_start_servers_advice(config_path, run_out)}")


def _start_servers_advice(config_path: Path | None, run_out: Path | None) -> str:
    if config_path is not None:
        return (f"start the servers {config_path} names (`refsav serve reference --config "
                f"{config_path}` offline, `refsav serve vllm --config {config_path}` on GPUs), "
                f"or correct the endpoints in {config_path}")
    if run_out is not None:
        return (f"start the servers this run's config names (`refsav serve reference` or "
                f"`refsav serve vllm`), or pass --config with the endpoints that serve these "
                f"models now (the config must match {run_out}'s fingerprint)")
    return ("no --config was given, so the built-in endpoints were tried: start "
            "`refsav serve reference` and pass --config configs/local-reference.yaml, or start "
            "the model servers (`refsav serve vllm --config …`) and pass that config")
