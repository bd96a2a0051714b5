"""The ``refsav`` command: one typer app; each part of the pipeline adds its own sub-commands."""

from __future__ import annotations

from typing import Annotated

import typer

from refsav_pipeline.cli_common import DEBUG, ReportingGroup, debug_from_env
from refsav_pipeline.deploy.cli import deploy_app
from refsav_pipeline.export.cli import export_app, report
from refsav_pipeline.pipeline import cli as pipeline_cli
from refsav_pipeline.review.cli import benchmark_app, review_app
from refsav_pipeline.sav.cli import sav_app
from refsav_pipeline.serve.cli import serve_app

app = typer.Typer(
    name="refsav",
    help="Build Ref-SAV referring expressions from SA-V masklets.",
    no_args_is_help=True,
    add_completion=False,
    cls=ReportingGroup,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(debug: Annotated[bool, typer.Option(
        "--debug", help="Show the traceback of an error (also REFSAV_DEBUG=1).")] = False) -> None:
    """Build Ref-SAV referring expressions from SA-V masklets."""
    DEBUG["on"] = debug or debug_from_env()


app.add_typer(sav_app, name="sav")
app.add_typer(serve_app, name="serve")
app.add_typer(benchmark_app, name="benchmark")
app.add_typer(review_app, name="review")
app.add_typer(export_app, name="export")
app.add_typer(deploy_app, name="deploy")
app.command("report")(report)
for command in (pipeline_cli.run, pipeline_cli.resume, pipeline_cli.requalify,
                pipeline_cli.status, pipeline_cli.demo):
    app.command()(command)


if __name__ == "__main__":
    app()
