"""The ``refsav`` command: one typer app; each part of the pipeline adds its own sub-commands."""

from __future__ import annotations

import typer

from refsav_pipeline.llm.cli import serve_app
from refsav_pipeline.pipeline import cli as pipeline_cli
from refsav_pipeline.sav.cli import sav_app

app = typer.Typer(
    name="refsav",
    help="Build Ref-SAV referring expressions from SA-V masklets.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(sav_app, name="sav")
app.add_typer(serve_app, name="serve")
for command in (pipeline_cli.run, pipeline_cli.resume, pipeline_cli.status, pipeline_cli.demo):
    app.command()(command)


if __name__ == "__main__":
    app()
