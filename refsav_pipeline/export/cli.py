"""``refsav export …`` (Sa2VA formats, Hugging Face dataset, checker) and ``refsav report``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from refsav_pipeline.cli_common import fail, load_config, run_folder
from refsav_pipeline.config import ExportConfig
from refsav_pipeline.errors import InputError, RecordError
from refsav_pipeline.export.inputs import chunks_option, display_config, require_validated
from refsav_pipeline.export.layout import LayoutName
from refsav_pipeline.review.paths import benchmark_path

export_app = typer.Typer(help="Export a run to Sa2VA's Ref-SAV formats or a Hugging Face "
                         "dataset, and check an export.", no_args_is_help=True)
console = Console()


class PartChoice(StrEnum):
    train = "train"
    benchmark = "benchmark"
    all = "all"


class ImagesChoice(StrEnum):
    none = "none"
    jpeg = "jpeg"


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

    chunks = chunks_option(exclude_chunks)
    out = run_folder(out)
    if to.exists() and not to.is_dir():
        raise fail(f"--to {to} is a file: pass a folder for the export")
    if part is not PartChoice.train:
        require_validated(out)
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


@export_app.command("hf")
def hf(
    to: Annotated[Path, typer.Option("--to", help="The dataset folder (DIR).")],
    out: Annotated[Path | None, typer.Option(
        help="Run output folder to export. Without it, --push uploads DIR as it is.")] = None,
    part: Annotated[PartChoice, typer.Option(help="Which splits to write.")] = PartChoice.all,
    images: Annotated[ImagesChoice, typer.Option(
        help="jpeg: add each row's crop, contour and frame strip, as the run report shows "
             "them (drawn from the SA-V videos).")] = ImagesChoice.none,
    max_shard_size: Annotated[str, typer.Option(
        help="Largest Parquet file, before compression, e.g. 500MB, 1GB.")] = "500MB",
    exclude_chunks: Annotated[str | None, typer.Option(
        help="Leave these SA-V chunks out of train too, e.g. sav_050-sav_055 (the chunks the "
             "benchmark was selected from are always left out).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Pipeline config YAML whose render section draws the images (default: the "
             "run's own config.json).")] = None,
    force: Annotated[bool, typer.Option(
        help="Replace DIR's README.md, data/ and provenance/ (nothing else in DIR).")] = False,
    push: Annotated[str | None, typer.Option(
        help="Then upload DIR to this Hub dataset repository, e.g. me/ref-sav (token: "
             "HF_TOKEN or `hf auth login`; Hub: HF_ENDPOINT).")] = None,
    private: Annotated[bool, typer.Option(
        help="With --push: create the repository private if it does not exist.")] = False,
) -> None:
    """Write a Hugging Face dataset folder (Parquet splits + a dataset card saying how the
    data was made); with --push, upload it to the Hub."""
    from refsav_pipeline.export.hf_push import (
        PushFailed,
        check_dataset_folder,
        check_repo_id,
        push_folder,
    )

    if push is not None:
        check_repo_id(push)
    if out is None:
        if push is None:
            raise InputError("pass --out RUN to write the dataset folder, or --push REPO_ID to "
                             f"upload {to} as it is")
        check_dataset_folder(to)
    else:
        _write_hf(out, to, part, images, max_shard_size, exclude_chunks, config, force)
    if push is not None:
        try:
            url = push_folder(to, push, private)
        except PushFailed as exc:
            raise fail(f"{exc}. {to} is written: push it again with `refsav export hf --to "
                       f"{to} --push {push}`", 1) from exc
        console.print(f"pushed {to} -> {url}", soft_wrap=True)


def _write_hf(out: Path, to: Path, part: PartChoice, images: ImagesChoice, max_shard_size: str,
              exclude_chunks: str | None, config: Path | None, force: bool) -> None:
    from datasets.utils.py_utils import convert_file_size_to_int

    from refsav_pipeline.export.hf import export_hf
    from refsav_pipeline.export.hf_dataset import HfOptions

    try:
        max_bytes = (int(max_shard_size) if max_shard_size.isdigit()  # plain bytes
                     else convert_file_size_to_int(max_shard_size))
    except ValueError as exc:
        raise InputError(f"--max-shard-size {max_shard_size!r} is not a size like 500MB or "
                         "1GB") from exc
    if max_bytes <= 0:
        raise InputError(f"--max-shard-size {max_shard_size!r} must be more than 0 bytes")
    opts = HfOptions(part=part.value, images=images.value, max_shard_bytes=max_bytes,
                     force=force, exclude_chunks=chunks_option(exclude_chunks))
    render_config = load_config(config) if config is not None else None
    result = export_hf(run_folder(out), to, opts, render_config)
    for s in result.splits:
        lacking = f", {s.without_images} without images" if s.without_images else ""
        console.print(f"{s.name}: {s.rows} rows, {s.videos} videos, {len(s.files)} Parquet "
                      f"file(s), {s.download_bytes:,} bytes{lacking}", soft_wrap=True)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)
    console.print(f"dataset: {to}/README.md, {to}/data/ "
                  f"(load it with datasets.load_dataset({str(to)!r}))", soft_wrap=True)


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
    config: Annotated[Path | None, typer.Option(
        help="Pipeline config YAML (render, export); default: the run's own config.json.")]
    = None,
    gallery: Annotated[int, typer.Option(min=0, help="Samples in the gallery.")] = 12,
) -> None:
    """Write a static HTML report of a run to <out>/report/index.html."""
    from refsav_pipeline.export.report import build_report

    override = load_config(config) if config is not None else None  # a broken one first
    out = run_folder(out)
    path = build_report(out, display_config(out, override), gallery)
    console.print(f"report: {path.resolve().as_uri()}")
