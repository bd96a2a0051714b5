"""``refsav report``: one static HTML page that lets a person judge a run in a minute.

Top to bottom: headline numbers, what went wrong (status and error kinds, with examples), the
answer checks and referring uniqueness (``export.quality``), how
long the captions are against the published Ref-SAV mean, which masklets the run covered, what
the model calls cost, and a gallery of samples showing the exact images the models saw next to
their captions. Everything is a file next to ``index.html`` (plots and images under ``img/``),
so the report opens from disk, travels as a folder, and needs no server.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from refsav_pipeline.config import PipelineConfig  # noqa: E402
from refsav_pipeline.export.lengths import REFSAV_MEAN_WORDS, words  # noqa: E402
from refsav_pipeline.export.pages import render  # noqa: E402
from refsav_pipeline.export.quality import plot_similarity, quality_summary  # noqa: E402
from refsav_pipeline.export.row_images import video_images  # noqa: E402
from refsav_pipeline.export.sa2va import compose_long  # noqa: E402
from refsav_pipeline.pipeline.plan import load_plan  # noqa: E402
from refsav_pipeline.records import CALLS, read_rows, shard_files, valid_marker  # noqa: E402

REPORT_DIR = "report"
IMG_DIR = "img"

STATUS_COLORS = {"ok": "#2e7d32", "rejected_inconsistent": "#f9a825", "rejected": "#ef6c00",
                 "failed": "#c62828"}
CAPTIONS = ("object_caption", "scene_caption", "video_caption")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def load_frame(out_dir: Path) -> pd.DataFrame:
    """Rows with the per-call structs flattened to ``latency_s.<call>`` columns."""
    table = read_rows(out_dir)
    df = table.flatten().to_pandas()
    for c in (*CAPTIONS, "error", "error_kind", "judge_reason", "size_bucket"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)  # None, never NaN
    df["kind"] = np.where(df["status"] == "ok", "ok",
                          df["status"] + ": " + df["error_kind"].fillna("-"))
    for c in CAPTIONS:
        df[c + "_words"] = df[c].map(words)
    return df


def load_markers(out_dir: Path) -> list[dict[str, Any]]:
    markers = []
    for p in shard_files(out_dir):
        m = valid_marker(p)
        if m is not None:
            markers.append(m.model_dump())
    return markers


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

def _save(fig: plt.Figure, path: Path) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")  # tight_layout warns on one-bar plots
    plt.close(fig)
    return f"{IMG_DIR}/{path.name}"


def plot_status(df: pd.DataFrame, img: Path) -> str:
    counts = df["kind"].value_counts().sort_values()
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.42 * max(len(counts), 1)))
    colors = [STATUS_COLORS.get(k.split(":")[0], "#555") for k in counts.index]
    bars = ax.barh(list(counts.index), list(counts.values), color=colors)
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("rows")
    ax.set_title("Rows by status and error kind")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_xlim(0, max(counts.max() if len(counts) else 1, 1) * 1.15)
    return _save(fig, img / "status.png")


def plot_lengths(df: pd.DataFrame, long_choice: str, img: Path) -> str:
    ok = df[df["status"] == "ok"]
    long_words = [words(compose_long(long_choice, o, s, v)) for o, s, v in
                  zip(ok["object_caption"], ok["scene_caption"], ok["video_caption"],
                      strict=True)]
    series = [(c.replace("_", " "), ok[c + "_words"].to_numpy()) for c in CAPTIONS]
    series.append((f"long expression ({long_choice})", np.asarray(long_words)))
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9), sharey=False)
    top = max([REFSAV_MEAN_WORDS * 1.3] + [float(v.max()) for _, v in series if v.size])
    bins = np.linspace(0, top, 25)
    for ax, (name, values) in zip(axes, series, strict=True):
        if values.size:
            ax.hist(values, bins=bins, color="#4a76b8", alpha=0.85)
            ax.axvline(values.mean(), color="#1b2a49", ls="--", lw=1.2,
                       label=f"this run {values.mean():.1f}")
        ax.axvline(REFSAV_MEAN_WORDS, color="#c62828", lw=1.6,
                   label=f"Ref-SAV {REFSAV_MEAN_WORDS}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("words")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7, frameon=False, loc="upper right")
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("ok rows")
    return _save(fig, img / "lengths.png")


def plot_masklets(df: pd.DataFrame, img: Path) -> str:
    order = ["small", "medium", "large"]
    df = df.assign(bucket=df["size_bucket"].fillna("unknown"))
    buckets = order + sorted(set(df["bucket"]) - set(order))
    cats = [(t, b) for t in sorted(df["masklet_type"].unique()) for b in buckets]
    cats = [c for c in cats if ((df["masklet_type"] == c[0]) & (df["bucket"] == c[1])).any()]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    x = np.arange(len(cats))
    bottom = np.zeros(len(cats))
    for status, color in STATUS_COLORS.items():
        vals = np.array([((df["masklet_type"] == t) & (df["bucket"] == b)
                          & (df["status"] == status)).sum() for t, b in cats], dtype=float)
        if vals.any():
            ax.bar(x, vals, bottom=bottom, color=color, label=status)
            bottom += vals
    ax.set_xticks(x, [f"{t}\n{b}" for t, b in cats])
    ax.set_ylabel("masklets")
    ax.set_title("Masklets by type and size bucket")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, img / "masklets.png")


def plot_latency(df: pd.DataFrame, img: Path) -> str:
    data = [df[f"latency_s.{c}"].dropna().to_numpy() for c in CALLS]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=True)
    ax.set_xticks(np.arange(1, len(CALLS) + 1), [c.replace("_", "\n") for c in CALLS])
    ax.set_ylabel("seconds per call")
    ax.set_title("Model-call latency per stage")
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, img / "latency.png")


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------

def latency_table(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    total = sum(float(df[f"latency_s.{c}"].sum()) for c in CALLS) or 1.0
    for c in CALLS:
        v = df[f"latency_s.{c}"].dropna()
        out.append({"stage": c, "calls": int(v.size),
                    "prompt_tokens": int(df[f"prompt_tokens_by_call.{c}"].sum()),
                    "completion_tokens": int(df[f"completion_tokens_by_call.{c}"].sum()),
                    "mean": float(v.mean()) if v.size else None,
                    "p50": float(v.quantile(0.5)) if v.size else None,
                    "p95": float(v.quantile(0.95)) if v.size else None,
                    "total": float(v.sum()), "share": float(v.sum()) / total})
    return out


def kind_table(df: pd.DataFrame) -> list[dict[str, Any]]:
    bad = df[df["status"] != "ok"]
    out = []
    for kind, g in bad.groupby("kind", sort=False):
        example = g["error"].dropna().head(1).tolist() or g["judge_reason"].dropna().head(1)\
            .tolist()
        out.append({"kind": kind, "rows": len(g), "videos": g["video_id"].nunique(),
                    "example": example[0] if example else ""})
    return sorted(out, key=lambda r: -r["rows"])


def masklet_table(df: pd.DataFrame) -> list[list[str]]:
    """Per (type, size bucket): masklets, ok rows and the ok rate."""
    g = df.assign(bucket=df["size_bucket"].fillna("unknown"),
                  ok=df["status"] == "ok").groupby(["masklet_type", "bucket"])
    rank = {"small": 0, "medium": 1, "large": 2}
    groups = sorted(g, key=lambda item: (item[0][0], rank.get(item[0][1], 3), item[0][1]))
    return [[str(t), str(b), str(len(x)), str(int(x["ok"].sum())),
             f"{100 * x['ok'].mean():.0f}%"] for (t, b), x in groups]


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


# ------------------------------------------------------------------------------------------------
# Gallery
# ------------------------------------------------------------------------------------------------

@dataclass
class GalleryItem:
    row: dict[str, Any]
    crop: str
    contour: str
    strip: str


def pick_gallery(df: pd.DataFrame, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` ok rows, round-robin over videos so one busy video cannot fill the page."""
    ok = df[df["status"] == "ok"].sort_values(["video_id", "masklet_type", "masklet_id"])
    per_video = [g.to_dict("records") for _, g in ok.groupby("video_id", sort=True)]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < n and any(depth < len(v) for v in per_video):
        picked += [v[depth] for v in per_video if depth < len(v)][: n - len(picked)]
        depth += 1
    return picked


def render_gallery(rows: list[dict[str, Any]], sav_root: Path, cfg: PipelineConfig,
                   img: Path) -> tuple[list[GalleryItem], list[str]]:
    """The crop, contour image and 8-frame box strip of each row, decoded once per video."""
    gdir = img / "gallery"
    gdir.mkdir(parents=True, exist_ok=True)
    items: list[GalleryItem] = []
    problems: list[str] = []
    for video in video_images(rows, sav_root, cfg, "report gallery"):
        if video.problem is not None:
            problems.append(video.problem)
            continue
        for r, files in zip(video.rows, video.images, strict=True):
            stem = _safe(f"{len(items):03d}_{video.video_id}_{r['masklet_type']}_"
                         f"{r['masklet_id']}")
            for name, data in files.items():
                (gdir / f"{stem}_{name}.jpg").write_bytes(data)
            rel = f"{IMG_DIR}/gallery/{stem}"
            items.append(GalleryItem(row=r, crop=f"{rel}_crop.jpg",
                                     contour=f"{rel}_contour.jpg", strip=f"{rel}_strip.jpg"))
    return items, problems


# ------------------------------------------------------------------------------------------------
# Page
# ------------------------------------------------------------------------------------------------

@dataclass
class Table:
    """Headers and rows of plain strings; ``numeric`` columns are right-aligned."""

    headers: list[str]
    rows: list[list[str]]
    numeric: set[int]


def gallery_view(item: GalleryItem, long_choice: str) -> dict[str, Any]:
    """What the page shows of one gallery item."""
    r = item.row
    long = compose_long(long_choice, r["object_caption"], r["scene_caption"], r["video_caption"])
    return {
        "key": f"{r['video_id']} {r['masklet_type']} {r['masklet_id']}",
        "title": f"{r['video_id']} · {r['masklet_type']} #{r['masklet_id']} · "
                 f"{r['size_bucket'] or '?'} · frame {r['max_area_frame']}",
        "crop": item.crop, "contour": item.contour, "strip": item.strip,
        "captions": [(name, text, words(text)) for name, text in (
            ("object", r["object_caption"]), ("scene", r["scene_caption"]),
            ("video", r["video_caption"]))],
        "long_words": words(long),
    }


def build_report(out_dir: str | Path, cfg: PipelineConfig | None = None,
                 gallery_size: int = 12) -> Path:
    """Write ``<out>/report/index.html`` (and ``img/``); returns the HTML path."""
    out_dir = Path(out_dir)
    cfg = cfg or PipelineConfig()
    plan = load_plan(out_dir)
    report = out_dir / REPORT_DIR
    img = report / IMG_DIR
    if img.exists():
        shutil.rmtree(img)
    img.mkdir(parents=True)
    df = load_frame(out_dir)
    markers = load_markers(out_dir)
    long_choice = cfg.export.long_expression
    n = len(df)
    counts = df["status"].value_counts().to_dict()

    def pct(k: str) -> str:
        return f"{100 * counts.get(k, 0) / n:.1f}%" if n else "–"

    ok = df[df["status"] == "ok"]
    long_words = [words(compose_long(long_choice, o, s, v)) for o, s, v in
                  zip(ok["object_caption"], ok["scene_caption"], ok["video_caption"],
                      strict=True)]
    mean_long = float(np.mean(long_words)) if long_words else float("nan")
    span = (max(m["finished_at"] for m in markers) - min(m["started_at"] for m in markers)
            if markers else 0.0)
    calls = sum(m["model_calls"] for m in markers)
    cached = sum(m["cached_calls"] for m in markers)
    ptok, ctok = int(df["prompt_tokens"].sum()), int(df["completion_tokens"].sum())
    plots = {"status": plot_status(df, img) if n else None,
             "lengths": plot_lengths(df, long_choice, img) if len(ok) else None,
             "masklets": plot_masklets(df, img) if n else None,
             "latency": plot_latency(df, img) if len(ok) else None}
    items, gallery_problems = render_gallery(pick_gallery(df, gallery_size),
                                             Path(plan.sav_root), cfg, img)
    quality = quality_summary(read_rows(out_dir).to_pylist())
    threshold = cfg.checks.similarity_threshold
    similarity_png = plot_similarity(quality, threshold, img / "similarity.png")
    check_kinds = sorted({k for per_call in quality.failed_answers.values() for k in per_call})

    cards = [  # value, label, class
        (f"{n}", f"rows ({df['video_id'].nunique()} of {plan.num_videos} videos)", ""),
        # green only when most rows are ok: "0.0% ok" is a failure, drawn as one
        (pct("ok"), f"ok ({counts.get('ok', 0)})",
         "ok" if n and counts.get("ok", 0) / n > 0.5 else "bad"),
        (pct("rejected_inconsistent"),
         f"rejected by judge ({counts.get('rejected_inconsistent', 0)})", "warn"),
        (pct("rejected"), f"rejected answers ({counts.get('rejected', 0)})", "warn"),
        (pct("failed"), f"failed ({counts.get('failed', 0)})", "bad"),
        (_fmt(mean_long, 1), f"mean words, long expression (Ref-SAV {REFSAV_MEAN_WORDS})", ""),
        (f"{len(markers)}/{len(plan.shards)}", "shards finished", ""),
        (f"{n / span * 60:.1f}" if span > 0 else "–", "rows per minute (wall)", ""),
        (f"{(ptok + ctok) / 1e3:.1f}k", "tokens (prompt + completion)", ""),
    ]
    kinds = kind_table(df)
    lat = latency_table(df)
    model_seconds = sum(r["total"] for r in lat)
    page = render(
        "report.html", run_name=out_dir.name, run_path=str(out_dir.resolve()), plan=plan,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        cards=cards, plots=plots, long_choice=long_choice,
        refsav_mean_words=REFSAV_MEAN_WORDS,
        kinds=Table(["kind", "rows", "videos", "example"],
                    [[k["kind"], str(k["rows"]), str(k["videos"]), str(k["example"])]
                     for k in kinds], {1, 2}),
        lengths=Table(["caption", "mean words", "median", "empty"],
                      [[c.replace("_", " "),
                        _fmt(ok[c + "_words"].mean() if len(ok) else None, 1),
                        _fmt(ok[c + "_words"].median() if len(ok) else None, 0),
                        str(int((ok[c].fillna("") == "").sum()))] for c in CAPTIONS],
                      {1, 2, 3}),
        masklets=Table(["type", "size bucket", "masklets", "ok", "ok rate"], masklet_table(df),
                       {2, 3, 4}) if n else None,
        latency=Table(["stage", "calls", "mean s", "p50 s", "p95 s", "model-seconds", "share",
                       "prompt tok", "completion tok"],
                      [[r["stage"], str(r["calls"]), _fmt(r["mean"]), _fmt(r["p50"]),
                        _fmt(r["p95"]), _fmt(r["total"], 1), f"{100 * r['share']:.0f}%",
                        f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}"]
                       for r in lat], {1, 2, 3, 4, 5, 6, 7, 8}),
        tokens=Table(["", "total", "per ok row"], [
            ["prompt tokens", f"{ptok:,}", _fmt(ptok / len(ok), 0) if len(ok) else "–"],
            ["completion tokens", f"{ctok:,}", _fmt(ctok / len(ok), 0) if len(ok) else "–"],
            ["completion tokens per model-second",
             _fmt(ctok / model_seconds, 1) if model_seconds else "–", ""],
            ["model calls (from shard markers)", f"{calls:,}", ""],
            ["answered from the request cache", f"{cached:,}", ""],
        ], {1, 2}),
        quality=quality, similarity_threshold=threshold,
        similarity_plot=f"{IMG_DIR}/{similarity_png.name}" if similarity_png else None,
        quality_checks=Table(["call", *check_kinds],
                             [[c, *(str(per.get(k, 0)) for k in check_kinds)]
                              for c, per in quality.failed_answers.items()],
                             set(range(1, len(check_kinds) + 1))),
        quality_examples=Table(["kind", "video", "masklet", "rejected answer", "why"],
                               [[x.kind, x.video_id, str(x.masklet_id), x.answer, x.error]
                                for x in quality.examples], {2}),
        gallery=[gallery_view(it, long_choice) for it in items],
        gallery_problems=gallery_problems)
    path = report / "index.html"
    path.write_text(page, encoding="utf-8")
    (report / "summary.json").write_text(json.dumps({
        "rows": n, "by_status": counts, "by_kind": {k["kind"]: k["rows"] for k in kinds},
        "mean_words": {c: float(ok[c + "_words"].mean()) if len(ok) else None
                       for c in CAPTIONS},
        "mean_long_words": None if np.isnan(mean_long) else mean_long,
        "gallery": len(items), "quality": quality.model_dump(
            exclude={"examples", "similarity_ok", "similarity_rejected"})}, indent=1))
    return path
