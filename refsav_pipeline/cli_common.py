"""What every ``refsav`` sub-command shares: reading the config with a clear error, not a trace."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from refsav_pipeline.config import PipelineConfig

_stderr = Console(stderr=True)


def load_config(path: Path | None) -> PipelineConfig:
    """The pipeline config at ``path`` (defaults if ``None``); exit 2 saying what is wrong."""
    try:
        return PipelineConfig.load(path)
    except (OSError, ValueError) as exc:
        _stderr.print(f"[red]error:[/red] config {path}: {exc}")
        raise typer.Exit(2) from exc
