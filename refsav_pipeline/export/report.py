"""``refsav report``: one static HTML page that lets a person judge a run in a minute.

Top to bottom: headline numbers, what went wrong (status and error kinds, with examples), the
answer checks and referring uniqueness (``export.quality``), how
long the captions are against the published Ref-SAV mean, which masklets the run covered, what
the model calls cost, and a gallery of samples showing the exact images the models saw next to
their captions. Everything is a file next to ``index.html`` (plots and images under ``img/``),
so the report opens from disk, travels as a folder, and needs no server.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from refsav_pipeline.config import PipelineConfig  # noqa: E402
from refsav_pipeline.errors import RecordError  # noqa: E402
from refsav_pipeline.export.quality import (  # noqa: E402
    QualitySummary,
    plot_similarity,
    quality_summary,
)
from refsav_pipeline.export.sa2va import compose_long  # noqa: E402
from refsav_pipeline.pipeline.plan import load_plan  # noqa: E402
from refsav_pipeline.progress import progress  # noqa: E402
from refsav_pipeline.records import CALLS, read_rows, shard_files, valid_marker  # noqa: E402
from refsav_pipeline.render import Renderer, encode_jpeg  # noqa: E402
from refsav_pipeline.sav.decode import decode_frames  # noqa: E402
from refsav_pipeline.sav.frames import boxes_at, decode_mask  # noqa: E402
from refsav_pipeline.sav.masklets import load_annotation, masklets_of  # noqa: E402

REPORT_DIR = "report"
IMG_DIR = "img"
REFSAV_MEAN_WORDS = 83.6
"""Average expression length of the published Ref-SAV train set (Sa2VA paper), in words."""

STATUS_COLORS = {"ok": "#2e7d32", "rejected_inconsistent": "#f9a825", "rejected": "#ef6c00",
                 "failed": "#c62828"}
CAPTIONS = ("object_caption", "scene_caption", "video_caption")
STRIP_HEIGHT = 120


def words(text: str | None) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _e(value: Any) -> str:
    """Escape anything from the data before it goes into HTML."""
    return html.escape("" if value is None else str(value), quote=True)


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
    return [[_e(t), _e(b), str(len(x)), str(int(x["ok"].sum())),
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
    renderer = Renderer(cfg.render)
    gdir = img / "gallery"
    gdir.mkdir(parents=True, exist_ok=True)
    items: list[GalleryItem] = []
    problems: list[str] = []
    by_video: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_video[r["video_id"]].append(r)
    for video_id in progress(sorted(by_video), "report gallery"):
        group = by_video[video_id]
        try:
            needed = {int(f) for r in group for f in [r["max_area_frame"], *r["sampled_frames"]]}
            decoded = decode_frames(sav_root / group[0]["video_path"], needed, video_id=video_id,
                                    backend=cfg.decode.backend).frames
            anns = {p: load_annotation(sav_root / p, video_id)
                    for p in {r["anno_path"] for r in group}}
        except (RecordError, OSError) as exc:
            problems.append(str(exc))
            continue
        for r in group:
            m = masklets_of(anns[r["anno_path"]], r["masklet_type"])[int(r["masklet_index"])]
            best = int(r["max_area_frame"])
            mask = decode_mask(m, best)
            frame = decoded[best]
            box = tuple(int(v) for v in r["bbox"])
            stem = _safe(f"{len(items):03d}_{video_id}_{r['masklet_type']}_{r['masklet_id']}")
            tiles = []
            for f, b in boxes_at(m, [int(f) for f in r["sampled_frames"]]).items():
                tile = renderer.boxed(decoded[f], b)
                scale = STRIP_HEIGHT / tile.shape[0]
                tiles.append(cv2.resize(tile, (max(1, round(tile.shape[1] * scale)),
                                               STRIP_HEIGHT), interpolation=cv2.INTER_AREA))
                tiles.append(np.full((STRIP_HEIGHT, 4, 3), 255, np.uint8))
            files = {
                "crop": encode_jpeg(renderer.crop(frame, mask, box), 320, 85),
                "contour": encode_jpeg(renderer.contour(frame, mask), 480, 85),
                "strip": encode_jpeg(np.hstack(tiles[:-1]), 2048, 80),
            }
            for name, data in files.items():
                (gdir / f"{stem}_{name}.jpg").write_bytes(data)
            rel = f"{IMG_DIR}/gallery/{stem}"
            items.append(GalleryItem(row=r, crop=f"{rel}_crop.jpg",
                                     contour=f"{rel}_contour.jpg", strip=f"{rel}_strip.jpg"))
    return items, problems


# ------------------------------------------------------------------------------------------------
# Page
# ------------------------------------------------------------------------------------------------

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#e3e6ec; --ok:#2e7d32; --warn:#f9a825;
        --bad:#c62828; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 34px 0 10px; }
.sub { color: var(--muted); font-size: 12.5px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(128px, 1fr)); gap: 10px;
         margin-top: 18px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; }
.card .v { font-size: 22px; font-weight: 650; } .card .l { color: var(--muted); font-size: 12px; }
.card.ok .v { color: var(--ok); } .card.warn .v { color: #b07800; }
.card.bad .v { color: var(--bad); }
.row { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; align-items: start; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.panel img { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { color: var(--muted); font-weight: 600; } td.n, th.n { text-align: right;
     font-variant-numeric: tabular-nums; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 14px; }
.item { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.item h3 { font-size: 13.5px; margin: 0 0 8px; font-weight: 600; }
.item .pics { display: flex; gap: 8px; align-items: flex-start; }
.item .pics img.crop { max-width: 34%; max-height: 200px; object-fit: contain;
                       background: #000; }
.item .pics img.contour { max-width: 64%; max-height: 200px; object-fit: contain; }
.item img.strip { width: 100%; margin-top: 8px; }
.item dl { margin: 8px 0 0; display: grid; grid-template-columns: 64px 1fr; gap: 4px 8px; }
.item dt { color: var(--muted); font-size: 12px; } .item dd { margin: 0; font-size: 13px; }
.item dd .w { color: var(--muted); font-size: 11.5px; }
.note { color: var(--muted); font-size: 12.5px; margin: 6px 0 0; }
@media (max-width: 900px) { .row { grid-template-columns: 1fr; } }
"""


def _card(value: str, label: str, cls: str = "") -> str:
    return f'<div class="card {cls}"><div class="v">{_e(value)}</div>' \
           f'<div class="l">{_e(label)}</div></div>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _quality_html(q: QualitySummary, plot: str | None, threshold: float) -> str:
    """The answer-quality section (data from ``export.quality``; docs/quality.md)."""
    kinds = sorted({k for per_call in q.failed_answers.values() for k in per_call})
    checks = _table(["call", *kinds], [[_e(c), *(str(per.get(k, 0)) for k in kinds)]
                                       for c, per in q.failed_answers.items()],
                    set(range(1, len(kinds) + 1))) if kinds else \
        '<p class="note">Every answer passed its checks at the first attempt.</p>'
    examples = _table(["kind", "video", "masklet", "rejected answer", "why"],
                      [[_e(x.kind), _e(x.video_id), str(x.masklet_id), _e(x.answer), _e(x.error)]
                       for x in q.examples], {2}) if q.examples else ""
    rejected = ", ".join(f"{_e(k)} {v}" for k, v in q.rejected_by_kind.items()) or "none"
    img = f'<img src="{_e(plot)}" alt="similarity between objects of a video">' if plot else \
        '<p class="note">No video with two ok objects.</p>'
    return f"""<div class="row"><div class="panel">{checks}
<p class="note">Answers that failed a check, per call and check kind, whether a retry healed
them or not. Rows whose answers stayed bad are <b>rejected</b>: {rejected}. Ok rows healed by
a retry: {q.healed_rows}.</p></div>
<div class="panel">{img}<p class="note">Referring uniqueness: each object's highest
similarity to another object of its video; at {threshold:g} or above two expressions are
near-duplicates. {q.recaptioned} objects were re-captioned contrastively, {q.recaptioned_ok} of
them became distinct.</p></div></div>{examples}"""


def _gallery_html(items: list[GalleryItem], long_choice: str) -> str:
    parts = []
    for it in items:
        r = it.row
        title = f"{r['video_id']} · {r['masklet_type']} #{r['masklet_id']} · " \
                f"{r['size_bucket'] or '?'} · frame {r['max_area_frame']}"
        long = compose_long(long_choice, r["object_caption"], r["scene_caption"],
                            r["video_caption"])
        dl = "".join(
            f"<dt>{name}</dt><dd>{_e(text)} <span class=\"w\">({words(text)} words)</span></dd>"
            for name, text in (("object", r["object_caption"]), ("scene", r["scene_caption"]),
                               ("video", r["video_caption"])))
        alt = _e(f"{r['video_id']} {r['masklet_type']} {r['masklet_id']}")
        parts.append(
            f'<div class="item" data-key="{alt}"><h3>{_e(title)}</h3>'
            f'<div class="pics"><img class="crop" src="{_e(it.crop)}" alt="crop {alt}">'
            f'<img class="contour" src="{_e(it.contour)}" alt="contour {alt}"></div>'
            f'<img class="strip" src="{_e(it.strip)}" alt="8 sampled frames {alt}">'
            f"<dl>{dl}<dt>long</dt><dd><span class=\"w\">= {_e(long_choice)} caption, "
            f"{words(long)} words</span></dd></dl></div>")
    return "\n".join(parts)


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
    quality_html = _quality_html(
        quality, f"{IMG_DIR}/{similarity_png.name}" if similarity_png else None, threshold)

    cards = "".join([
        _card(f"{n}", f"rows ({df['video_id'].nunique()} of {plan.num_videos} videos)"),
        _card(pct("ok"), f"ok ({counts.get('ok', 0)})", "ok"),
        _card(pct("rejected_inconsistent"),
              f"rejected by judge ({counts.get('rejected_inconsistent', 0)})", "warn"),
        _card(pct("rejected"), f"rejected answers ({counts.get('rejected', 0)})", "warn"),
        _card(pct("failed"), f"failed ({counts.get('failed', 0)})", "bad"),
        _card(_fmt(mean_long, 1), f"mean words, long expression (Ref-SAV {REFSAV_MEAN_WORDS})"),
        _card(f"{len(markers)}/{len(plan.shards)}", "shards finished"),
        _card(f"{n / span * 60:.1f}" if span > 0 else "–", "rows per minute (wall)"),
        _card(f"{(ptok + ctok) / 1e3:.1f}k", "tokens (prompt + completion)"),
    ])
    kinds = kind_table(df)
    kinds_html = _table(["kind", "rows", "videos", "example"],
                        [[_e(k["kind"]), str(k["rows"]), str(k["videos"]), _e(k["example"])]
                         for k in kinds], {1, 2}) if kinds else \
        '<p class="note">No rejected or failed rows.</p>'
    lat = latency_table(df)
    lat_html = _table(["stage", "calls", "mean s", "p50 s", "p95 s", "model-seconds", "share",
                       "prompt tok", "completion tok"],
                      [[_e(r["stage"]), str(r["calls"]), _fmt(r["mean"]), _fmt(r["p50"]),
                        _fmt(r["p95"]), _fmt(r["total"], 1), f"{100 * r['share']:.0f}%",
                        f"{r['prompt_tokens']:,}", f"{r['completion_tokens']:,}"]
                       for r in lat], {1, 2, 3, 4, 5, 6, 7, 8})
    model_seconds = sum(r["total"] for r in lat)
    tok_rows = [
        ["prompt tokens", f"{ptok:,}", _fmt(ptok / len(ok), 0) if len(ok) else "–"],
        ["completion tokens", f"{ctok:,}", _fmt(ctok / len(ok), 0) if len(ok) else "–"],
        ["completion tokens per model-second",
         _fmt(ctok / model_seconds, 1) if model_seconds else "–", ""],
        ["model calls (from shard markers)", f"{calls:,}", ""],
        ["answered from the request cache", f"{cached:,}", ""],
    ]
    tok_html = _table(["", "total", "per ok row"], [[_e(c) for c in r] for r in tok_rows], {1, 2})
    length_rows = [[_e(c.replace("_", " ")), _fmt(ok[c + "_words"].mean() if len(ok) else None, 1),
                    _fmt(ok[c + "_words"].median() if len(ok) else None, 0),
                    str(int((ok[c].fillna("") == "").sum()))] for c in CAPTIONS]
    masklet_html = _table(["type", "size bucket", "masklets", "ok", "ok rate"],
                          masklet_table(df), {2, 3, 4}) if n else ""
    length_html = _table(["caption", "mean words", "median", "empty"], length_rows, {1, 2, 3})

    def fig(key: str, alt: str) -> str:
        return f'<img src="{_e(plots[key])}" alt="{_e(alt)}">' if plots[key] else \
            '<p class="note">No data.</p>'

    gallery_note = "".join(f'<p class="note">{_e(p)}</p>' for p in gallery_problems)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ref-SAV run report · {_e(out_dir.name)}</title><style>{CSS}</style></head>
<body><main>
<h1>Ref-SAV run report</h1>
<div class="sub">run <b>{_e(out_dir.resolve())}</b> · SA-V root {_e(plan.sav_root)} ·
config {_e(plan.config_fingerprint)} · pipeline {_e(plan.pipeline_version)} ·
planned {_e(plan.created)} · report {_e(created)}</div>
<div class="cards" id="cards">{cards}</div>

<h2>What went wrong</h2>
<div class="row"><div class="panel">{fig("status", "rows by status")}</div>
<div class="panel">{kinds_html}</div></div>

<h2 id="quality">Answer quality</h2>
{quality_html}

<h2>Caption lengths</h2>
<div class="panel" id="lengths">{fig("lengths", "caption length histograms")}
<p class="note">Red line: the published Ref-SAV average expression length
({REFSAV_MEAN_WORDS} words). The long expression is the <b>{_e(long_choice)}</b> caption
(config <code>export.long_expression</code>).</p>{length_html}</div>

<h2>Masklets</h2>
<div class="row"><div class="panel">{fig("masklets", "masklets by type and size")}</div>
<div class="panel">{masklet_html}<p class="note">Size buckets are SA-V's (small &lt; 32²,
medium &lt; 96² pixels of mean visible area). Bars are stacked by row status, so a bucket
that fails more than the others stands out.</p></div></div>

<h2>Throughput and tokens</h2>
<div class="row"><div class="panel">{fig("latency", "latency per stage")}{lat_html}</div>
<div class="panel">{tok_html}<p class="note">Latency and tokens are recorded per call (the
stage table on the left); totals here. Wall-clock rate spans the first shard start to the last
shard finish.</p></div></div>

<h2>Samples</h2>
<p class="note">The images the models saw: object crop (max-area frame), yellow contour (same
frame) and the 8 sampled frames with their boxes. {len(items)} ok rows, picked round-robin over
videos.</p>{gallery_note}
<div class="gallery" id="gallery">
{_gallery_html(items, long_choice)}
</div>
</main></body></html>
"""
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
