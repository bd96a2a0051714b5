"""``refsav sav …``: make a synthetic SA-V sample, inspect the frames chosen for a video."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from refsav_pipeline.cli_common import fail
from refsav_pipeline.errors import InputError, RecordError
from refsav_pipeline.sav.index import SavVideoRef, find_video

sav_app = typer.Typer(help="SA-V data: synthesize a sample, inspect a video's masklets.",
                      no_args_is_help=True)
console = Console()


class TypeChoice(StrEnum):
    manual = "manual"
    auto = "auto"
    all = "all"


@sav_app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write sav_train/sav_0XX/… into.")],
    videos: Annotated[int, typer.Option(min=1, help="Number of videos.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed (also prefixes the video ids).")] = 0,
) -> None:
    """Write a synthetic SA-V sample (real mp4 + RLE JSON) with a ground-truth sidecar."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: pass a folder for the sample")
    from refsav_pipeline.sav.synth import synth_sav

    made = synth_sav(out, videos, seed)
    n = sum(len(v.objects) for v in made)
    console.print(f"wrote {len(made)} videos, {n} masklets under {out}")


def inspect_rows(sav_root: Path, video: str, kind: str, num_sampled: int = 8,
                 ref: SavVideoRef | None = None) -> list[dict]:
    """One dict per masklet with the frames the pipeline will use (JSON files only)."""
    from refsav_pipeline.sav.frames import choose_frames
    from refsav_pipeline.sav.masklets import read_video_masklets

    ref = ref or find_video(sav_root, video)
    types = ("manual", "auto") if kind == "all" else (kind,)
    rows = []
    for m in read_video_masklets(sav_root, ref, types):
        row: dict = {"masklet_id": m.masklet_id, "type": m.type}
        try:
            c = choose_frames(m, num_sampled)
        except RecordError as exc:
            row.update(max_area_frame=None, max_area=0, sampled_frames=[], bbox=None,
                       error=str(exc))
        else:
            row.update(max_area_frame=c.max_area_frame, max_area=c.max_area,
                       sampled_frames=list(c.sampled_frames),
                       bbox=list(c.bboxes[c.max_area_frame]))
        rows.append(row)
    return rows


@sav_app.command()
def inspect(
    sav_root: Annotated[Path, typer.Option(help="SA-V root (nested or flat).")],
    video: Annotated[str, typer.Option(help="Video id, e.g. sav_000001.")],
    type: Annotated[TypeChoice, typer.Option("--type", help="Masklet type.")] = TypeChoice.all,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Per masklet: max-area frame, its area and box, and the 8 sampled frames (24 fps indices)."""
    if not sav_root.is_dir():
        raise InputError(f"SA-V root {sav_root} is not a folder: pass the folder that holds "
                         "sav_train/ (or the <video>_manual.json files) as --sav-root")
    try:
        ref = find_video(sav_root, video)
    except FileNotFoundError as exc:
        raise InputError(f"{exc}: pass a video id of that root as --video (e.g. sav_000001)"
                         ) from exc
    try:
        rows = inspect_rows(sav_root, video, type.value, ref=ref)
    except RecordError as exc:
        raise fail(str(exc), 1) from exc
    if as_json:
        keys = ("masklet_id", "type", "max_area_frame", "max_area", "sampled_frames", "bbox")
        typer.echo(json.dumps([{k: r[k] for k in keys} for r in rows]))
        for r in rows:
            if "error" in r:
                typer.echo(r["error"], err=True)
        return
    table = Table(title=f"{video}: {len(rows)} masklets")
    for col in ("masklet_id", "type", "max_area_frame", "max_area", "sampled_frames", "bbox"):
        table.add_column(col)
    for r in rows:
        frames = " ".join(map(str, r["sampled_frames"])) or r.get("error", "")
        table.add_row(str(r["masklet_id"]), r["type"], str(r["max_area_frame"]),
                      str(r["max_area"]), frames, str(r["bbox"]))
    console.print(table)
