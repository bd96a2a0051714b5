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
from refsav_pipeline.export.layout import LayoutName
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
    layout: Annotated[LayoutName, typer.Option(
        help="flat: DEST/Ref-SAV.json + DEST/ref_sav_eval/. sa2va: DEST is Sa2VA's repository "
             "root; writes its data/ tree so its configs run unchanged.")] = LayoutName.flat,
    exclude_chunks: Annotated[str | None, typer.Option(
        help="Leave these SA-V chunks out of train, e.g. sav_050-sav_055 (the chunks the "
             "benchmark was selected from are always left out).")] = None,
) -> None:
    """Write Sa2VA's training JSON and ref_sav_eval/ benchmark (see --layout)."""
    from refsav_pipeline.export.layout import layout_for
    from refsav_pipeline.export.sa2va import export_benchmark, export_train
    from refsav_pipeline.sav.chunks import parse_chunks

    try:
        chunks = parse_chunks(exclude_chunks) if exclude_chunks is not None else []
    except ValueError as exc:
        raise fail(f"--exclude-chunks: {exc}") from exc
    out = run_folder(out)
    if to.exists() and not to.is_dir():
        raise fail(f"--to {to} is a file: pass a folder for the export")
    if part is not PartChoice.train and not validated_path(out).is_file():
        raise fail(f"no {validated_path(out)} for the benchmark part: run `refsav review "
                   f"export --out {out}` after the review, or pass --part train")
    cfg: ExportConfig = load_config(config).export
    if long_expression is not None:
        cfg = cfg.model_copy(update={"long_expression": long_expression.value})
    where = layout_for(layout, to)
    try:
        if part in (PartChoice.train, PartChoice.all):
            if not benchmark_path(out).is_file():
                console.print(f"[yellow]warning:[/yellow] no {benchmark_path(out)}: no "
                              "benchmark videos are held out of train")
            t = export_train(out, where, cfg, chunks)
            also = "".join(f" and {p}" for p in t.also_written)
            console.print(f"train: {t.entries} entries, {t.objects} objects -> {t.path}{also} "
                          f"({t.excluded_benchmark} benchmark-video rows held out, "
                          f"{t.excluded_chunk_rows} rows of held-out chunks: "
                          f"{', '.join(t.excluded_chunks) or 'none'}; "
                          f"{t.missing_text} rows without a {cfg.long_expression} caption)",
                          soft_wrap=True)
            if where.sav_link is not None:
                console.print(f"train: {where.sav_link} -> {where.sav_link.resolve()}",
                              soft_wrap=True)
            for key, why in t.frame_mismatch.items():
                console.print(f"[yellow]warning:[/yellow] train: left out {key}: {why}",
                              soft_wrap=True)
        if part in (PartChoice.benchmark, PartChoice.all):
            b = export_benchmark(out, where.bench_parent, cfg)
            console.print(f"benchmark: {b.videos} videos, {b.objects} objects, "
                          f"{b.long_expressions} long + {b.short_expressions} short expressions, "
                          f"{b.frames} frames -> {b.dir}")
            for w in b.warnings:
                console.print(f"[yellow]warning:[/yellow] {w}")
    except (FileNotFoundError, FileExistsError, ValueError, RecordError) as exc:
        raise fail(str(exc), 1) from exc


@export_app.command("check")
def check(
    dest: Annotated[Path, typer.Argument(
        help="Export folder (Ref-SAV.json, ref_sav_eval/) or Sa2VA root (data/ tree).")],
    sav_root: Annotated[Path | None, typer.Option(
        help="SA-V root: check the train JSON's paths and frame counts (default in a Sa2VA "
             "tree: data/video_datas/sam_v_full).")] = None,
    strict: Annotated[bool, typer.Option(
        help="Warnings fail too (a benchmark without long or short expressions, "
             "unverified training paths, objects without short_caps).")] = False,
) -> None:
    """Validate an export against Sa2VA's formats; exit 1 with the list of problems."""
    if not dest.is_dir():
        raise fail(f"{dest} is not a folder: pass the --to of a `refsav export sa2va`")
    from refsav_pipeline.export.check import check_export

    report = check_export(dest, sav_root)
    for p in report.problems:
        typer.echo(str(p))
    for w in report.warnings:
        typer.echo(f"warning: {w}")
    if not report.passed(strict):
        failing = len(report.problems) + (len(report.warnings) if strict else 0)
        console.print(f"[red]{failing} problem(s)[/red] in {dest} ({report.layout} layout"
                      f"{', strict' if strict else ''})")
        raise typer.Exit(1)
    console.print(f"[green]ok[/green]: {dest} matches Sa2VA's Ref-SAV formats "
                  f"({report.layout} layout{', strict' if strict else ''})")


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
