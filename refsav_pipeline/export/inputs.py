"""Checks that more than one export makes of its inputs before it writes: one message each."""

from __future__ import annotations

from pathlib import Path

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.errors import InputError
from refsav_pipeline.pipeline.plan import CONFIG_FILE
from refsav_pipeline.review.paths import validated_path
from refsav_pipeline.sav.chunks import parse_chunks


def require_validated(out_dir: Path) -> None:
    """The benchmark part needs the review's validated file."""
    if not validated_path(out_dir).is_file():
        raise InputError(f"no {validated_path(out_dir)} for the benchmark part: run `refsav "
                         f"review export --out {out_dir}` after the review, or pass --part "
                         "train")


def chunks_option(spec: str | None) -> list[str]:
    """``--exclude-chunks``: the chunks it names ([] if not given)."""
    try:
        return parse_chunks(spec) if spec is not None else []
    except ValueError as exc:
        raise InputError(f"--exclude-chunks: {exc}") from exc


def saved_config(out_dir: Path) -> PipelineConfig | None:
    """The config the run was made with (its ``config.json``); ``None`` if it has none."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return PipelineConfig.model_validate_json(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not a pipeline config: {exc}") from exc


def display_config(out_dir: Path, override: PipelineConfig | None) -> PipelineConfig:
    """How a run's images are drawn for people (report, dataset): ``override`` (``--config``)
    if given, else the run's own config (what the models were shown), else the defaults."""
    return override or saved_config(out_dir) or PipelineConfig()
