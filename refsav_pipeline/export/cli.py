"""``refsav export …`` (Sa2VA formats, checker) and ``refsav report``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from refsav_pipeline.cli_common import fail, load_config, run_folder
from refsav_pipeline.config import ExportConfig
from refsav_pipeline.errors import RecordError
from refsav_pipeline.export.check import check_export
from refsav_pipeline.review.paths import benchmark_path, validated_path

export_app = typer.Typer(help="Export a run to Sa2VA's Ref-SAV formats and check an export.",
                         no_args_is_help=True)
console = Console()


class PartChoice(StrEnum):
    train = "train"
    benchmark = "benchmark"
    all = "all"


class LongChoice(StrEnum):
    video = "video"
    scene = "scene"
    object = "object"
    scene_video = "scene+video"


@export_app.command("sa2va")
def sa2va(
    out: Annotated[Path, typer.Option(help="Run output folder (has plan.json and shards/).")],
    to: Annotated[Path, typer.Option("--to", help="Destination folder.")],
    part: Annotated[PartChoice, typer.Option(help="What to export.")] = PartChoice.all,
    config: Annotated[Path | None, typer.Option(help="Pipeline config YAML (export section).")]
    = None,
    long_expression: Annotated[LongChoice | None, typer.Option(
        help="Override export.long_expression: which caption is the long expression.")] = None,
) -> None:
    """Write DEST/Ref-SAV.json (train) and DEST/ref_sav_eval/ (benchmark) for Sa2VA."""
    from refsav_pipeline.export.sa2va import export_benchmark, export_train

    out = run_folder(out)
    if to.exists() and not to.is_dir():
        raise fail(f"--to {to} is a file: pass a folder for the export")
    if part is not PartChoice.train and not validated_path(out).is_file():
        raise fail(f"no {validated_path(out)} for the benchmark part: run `refsav review "
                   f"export --out {out}` after the review, or pass --part train")
    cfg: ExportConfig = load_config(config).export
    if long_expression is not None:
        cfg = cfg.model_copy(update={"long_expression": long_expression.value})
    try:
        if part in (PartChoice.train, PartChoice.all):
            if not benchmark_path(out).is_file():
                console.print(f"[yellow]warning:[/yellow] no {benchmark_path(out)}: no "
                              "benchmark videos are held out of train")
            t = export_train(out, to, cfg)
            console.print(f"train: {t.entries} entries, {t.objects} objects -> {t.path} "
                          f"({t.excluded_benchmark} benchmark-video rows held out, "
                          f"{t.missing_text} rows without a {cfg.long_expression} caption)")
        if part in (PartChoice.benchmark, PartChoice.all):
            b = export_benchmark(out, to, cfg)
            console.print(f"benchmark: {b.videos} videos, {b.objects} objects, "
                          f"{b.long_expressions} long + {b.short_expressions} short expressions, "
                          f"{b.frames} frames -> {b.dir}")
            for w in b.warnings:
                console.print(f"[yellow]warning:[/yellow] {w}")
    except (FileNotFoundError, FileExistsError, ValueError, RecordError) as exc:
        raise fail(str(exc), 1) from exc


@export_app.command("check")
def check(
    dest: Annotated[Path, typer.Argument(help="Export folder (Ref-SAV.json, ref_sav_eval/).")],
    sav_root: Annotated[Path | None, typer.Option(
        help="SA-V root: also check that the train JSON's paths exist.")] = None,
) -> None:
    """Validate an export against Sa2VA's formats; exit 1 with the list of problems."""
    if not dest.is_dir():
        raise fail(f"{dest} is not a folder: pass the --to of a `refsav export sa2va`")
    problems = check_export(dest, sav_root)
    if problems:
        for p in problems:
            typer.echo(str(p))
        console.print(f"[red]{len(problems)} problem(s)[/red] in {dest}")
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {dest} matches Sa2VA's Ref-SAV formats")


def report(
    out: Annotated[Path, typer.Option(help="Run output folder.")],
    config: Annotated[Path | None, typer.Option(help="Pipeline config YAML (render, export).")]
    = None,
    gallery: Annotated[int, typer.Option(min=0, help="Samples in the gallery.")] = 12,
) -> None:
    """Write a static HTML report of a run to <out>/report/index.html."""
    from refsav_pipeline.export.report import build_report

    cfg = load_config(config)
    path = build_report(run_folder(out), cfg, gallery)
    console.print(f"report: {path.resolve().as_uri()}")
