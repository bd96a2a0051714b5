"""The dataset card of ``refsav export hf``: what the Hub and ``datasets`` read (YAML front
matter), then how the data was made, what is in it and how to load it.

Everything on the card is read from the run: model ids and prompt versions from its rows,
settings from its ``config.json``, counts from its rows, the review from the review files.
The card is ``export/templates/dataset_card.md`` filled with ``CardFacts``; the front matter is
built with ``huggingface_hub``'s and ``datasets``' own classes, so both read it back.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from refsav_pipeline import __version__
from refsav_pipeline.export.hf_dataset import (
    DATA_DIR,
    IMAGE_SOURCES,
    PROVENANCE_DIR,
    HfInputs,
    SplitFiles,
    columns,
    review_status,
)
from refsav_pipeline.export.lengths import REFSAV_MEAN_WORDS, words
from refsav_pipeline.export.pages import render
from refsav_pipeline.export.row_images import DISPLAY_JPEG, STRIP_HEIGHT
from refsav_pipeline.llm.config import PromptRef
from refsav_pipeline.llm.prompts import load_prompt, prompt_path
from refsav_pipeline.records import CALLS
from refsav_pipeline.review import load_validated
from refsav_pipeline.review.paths import benchmark_path, decisions_path, validated_path
from refsav_pipeline.review.select import benchmark_chunks, load_benchmark
from refsav_pipeline.review.stats import Agreement, review_stats
from refsav_pipeline.review.store import Progress
from refsav_pipeline.sav.chunks import chunk_of, format_chunks

if TYPE_CHECKING:
    import datasets

ROW_SETTINGS_FILE = "row_settings.json"
PROMPTS_DIR = "prompts"
LICENSE = "cc-by-4.0"
TASK_CATEGORIES = ["video-text-to-text", "image-segmentation"]
TAGS = ["referring-video-object-segmentation", "sa-v", "ref-sav", "sa2va"]
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]


class PromptFacts(BaseModel):
    call: str
    ref: str  # id@vN, as the rows record it
    rows: int  # rows that name it
    file: str | None  # provenance/prompts/<file>, if it was found
    sha256: str | None
    role: str | None  # captioner or judge, from the prompt file
    sampling: dict[str, Any] | None  # what each request sent (None: the run's config is gone)
    mm_processor_kwargs: dict[str, Any] | None


class ReviewFacts(BaseModel):
    selected: int  # samples in the benchmark selection
    selected_videos: int
    selection_chunks: str  # "" if the selection was not restricted to chunks
    validated: int
    by_status: dict[str, int]
    short_expressions: int
    reviewers: int
    progress: Progress | None  # decisions on the current versions (None: no decision log)
    agreement: Agreement | None


class LengthRow(BaseModel):
    split: str
    expression: str
    texts: int
    mean: float | None
    median: float | None


def size_category(rows: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if rows < limit), "10M<n<100M")


def _ref(value: str) -> PromptRef | None:
    """``id@vN`` → PromptRef (None if the row holds something else)."""
    pid, _, version = value.rpartition("@v")
    return PromptRef(id=pid, version=int(version)) if pid and version.isdigit() else None


# ------------------------------------------------------------------------------------------------
# Provenance files
# ------------------------------------------------------------------------------------------------

def write_provenance(inputs: HfInputs, folder: Path, warnings: list[str]) -> list[PromptFacts]:
    """``row_settings.json`` (compact sorted JSON: its sha256 starts with the fingerprint) and
    a copy of each prompt file the rows name; returns what the card says about the prompts."""
    folder.mkdir(parents=True)
    cfg = inputs.run_config
    if cfg is not None:
        blob = json.dumps(cfg.row_settings(), sort_keys=True, separators=(",", ":"))
        (folder / ROW_SETTINGS_FILE).write_text(blob)
    named: Counter[tuple[str, str]] = Counter(
        (call, ref) for r in inputs.run_rows for call, ref in (r["prompt_versions"] or {}).items()
        if ref)
    prompts_dir = cfg.models.prompts.dir if cfg is not None else None
    out = []
    for (call, value), n in sorted(named.items(), key=lambda x: (CALLS.index(x[0][0]), x[0][1])):
        ref = _ref(value)
        facts = PromptFacts(call=call, ref=value, rows=n, file=None, sha256=None, role=None,
                            sampling=None, mm_processor_kwargs=None)
        out.append(facts)
        path = prompt_path(ref, prompts_dir) if ref is not None else None
        if ref is None or path is None or not path.is_file():
            warnings.append(f"prompt {value} ({call}): no file {path}; the card cannot show "
                            "its hash")
            continue
        tpl = load_prompt(ref, prompts_dir)
        (folder / PROMPTS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(path, folder / PROMPTS_DIR / path.name)
        facts.file, facts.sha256, facts.role = path.name, tpl.digest, tpl.model
        if cfg is not None:  # as llm/session.py builds each request
            model = getattr(cfg.models, tpl.model)
            facts.sampling = {**model.sampling.as_body(), **tpl.sampling}
            facts.mm_processor_kwargs = ({**model.mm_processor_kwargs,
                                          **tpl.mm_processor_kwargs}
                                         if tpl.images.max else {})
    return out


# ------------------------------------------------------------------------------------------------
# Facts
# ------------------------------------------------------------------------------------------------

def review_facts(out_dir: Path) -> ReviewFacts | None:
    """The review behind the benchmark; ``None`` if the run has no validated benchmark."""
    if not validated_path(out_dir).is_file():
        return None
    validated = load_validated(out_dir)
    selected = load_benchmark(out_dir) if benchmark_path(out_dir).is_file() else []
    by_status = Counter(review_status(s) for s in validated)
    progress = agreement = None
    if selected and decisions_path(out_dir).is_file():
        stats = review_stats(out_dir)
        progress, agreement = stats.progress, stats.agreement
    return ReviewFacts(
        selected=len(selected), selected_videos=len({s.video_id for s in selected}),
        selection_chunks=format_chunks(benchmark_chunks(out_dir)), validated=len(validated),
        by_status=dict(sorted(by_status.items())),
        short_expressions=sum(len(s.short_expressions) for s in validated),
        reviewers=len({r for s in validated for r in s.reviewers}), progress=progress,
        agreement=agreement)


def lengths(inputs: HfInputs) -> list[LengthRow]:
    out = []
    for split, records in inputs.splits.items():
        for name in ("object_expression", "scene_expression", "video_expression",
                     "short_expressions"):
            texts = [t for r in records for t in
                     (r[name] if name == "short_expressions" else [r[name]]) if t]
            counts = [words(t) for t in texts]
            out.append(LengthRow(split=split, expression=name, texts=len(texts),
                                 mean=statistics.fmean(counts) if counts else None,
                                 median=statistics.median(counts) if counts else None))
    return out


def run_counts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows and videos of the run by status and error kind, largest first."""
    by_kind: Counter[tuple[str, str]] = Counter()
    videos: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        key = (r["status"], r["error_kind"] or "")
        by_kind[key] += 1
        videos.setdefault(key, set()).add(r["video_id"])
    return [{"status": s, "kind": k, "rows": n, "videos": len(videos[(s, k)])}
            for (s, k), n in sorted(by_kind.items(), key=lambda x: (x[0][0] != "ok", -x[1]))]


class CardFacts(BaseModel):
    """Everything the card says, from the run."""

    pretty_name: str
    splits: list[dict[str, Any]]
    total_rows: int
    columns: list[dict[str, str]]
    images: bool
    without_images: int
    sav_roots: list[str]  # top folders of the videos' paths (sav_train, ...)
    chunks: str
    videos_planned: int
    videos_with_rows: int
    settings: dict[str, Any] | None  # the run's row settings (None: no config.json)
    render: dict[str, Any]  # how the published images were drawn
    models: dict[str, list[str]]  # role -> ids the rows record
    prompts: list[PromptFacts]
    fingerprint: str
    pipeline_version: str
    exporter_version: str
    planned: str
    counts: list[dict[str, Any]]
    run_rows: int
    held_out: dict[str, Any] | None
    lengths: list[LengthRow]
    refsav_mean_words: float
    review: ReviewFacts | None


def card_facts(inputs: HfInputs, splits: list[SplitFiles], prompts: list[PromptFacts]
               ) -> CardFacts:
    plan = inputs.plan
    planned = [v for s in plan.shards for v in s.videos]
    models = {role: sorted({r[f"{role}_model"] for r in inputs.run_rows
                            if r[f"{role}_model"]}) for role in ("captioner", "judge")}
    train = inputs.train
    cfg = inputs.run_config
    return CardFacts(
        pretty_name="Ref-SAV-style referring expressions for SA-V (refsav-pipeline)",
        splits=[{"name": s.name, "rows": s.rows, "videos": s.videos, "files": len(s.files),
                 "bytes": s.download_bytes} for s in splits],
        total_rows=sum(s.rows for s in splits),
        columns=[{"name": c.name, "kind": c.kind, "meaning": c.meaning}
                 for c in columns(inputs.opts.images)],
        images=inputs.opts.images == "jpeg",
        without_images=sum(s.without_images for s in splits),
        sav_roots=sorted({v.video_path.split("/", 1)[0] for v in planned if "/" in
                          v.video_path}),
        chunks=format_chunks([c for v in planned if (c := chunk_of(v.video_path))]),
        videos_planned=plan.num_videos,
        videos_with_rows=len({r["video_id"] for r in inputs.run_rows}),
        settings=cfg.row_settings() if cfg is not None else None,
        render=inputs.render_config.render.model_dump(mode="json"),
        models=models, prompts=prompts, fingerprint=plan.config_fingerprint,
        pipeline_version=plan.pipeline_version, exporter_version=__version__,
        planned=plan.created, counts=run_counts(inputs.run_rows),
        run_rows=len(inputs.run_rows),
        held_out=None if train is None else {
            "ok_rows": train.ok_rows, "benchmark_rows": train.excluded_benchmark,
            "chunks": format_chunks(train.excluded_chunks),
            "chunk_rows": train.excluded_chunk_rows},
        lengths=lengths(inputs), refsav_mean_words=REFSAV_MEAN_WORDS,
        review=review_facts(inputs.out_dir))


# ------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------

def front_matter(facts: CardFacts, feats: datasets.Features, splits: list[SplitFiles]) -> str:
    """The YAML the Hub and ``datasets`` read: licence, tasks, sizes, one ``default`` config
    with a data_files pattern per split, and the features and split sizes."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(license=LICENSE, language=["en"], task_categories=TASK_CATEGORIES,
                           size_categories=[size_category(facts.total_rows)],
                           pretty_name=facts.pretty_name, tags=TAGS)
    info = DatasetInfo(features=feats, splits=SplitDict(),
                       download_size=sum(s.download_bytes for s in splits),
                       dataset_size=sum(s.num_bytes for s in splits))
    for s in splits:
        info.splits.add(SplitInfo(name=s.name, num_bytes=s.num_bytes, num_examples=s.rows))
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs({"default": {"data_files": [
        {"split": s.name, "path": f"{DATA_DIR}/{s.name}-*"} for s in splits]}}
    ).to_dataset_card_data(data)
    return data.to_yaml()


def write_card(inputs: HfInputs, feats: datasets.Features, splits: list[SplitFiles],
               prompts: list[PromptFacts], path: Path) -> None:
    facts = card_facts(inputs, splits, prompts)
    text = render("dataset_card.md", front_matter=front_matter(facts, feats, splits),
                  f=facts, strip_height=STRIP_HEIGHT,
                  image_sides=[(c, DISPLAY_JPEG[src][0]) for c, src in IMAGE_SOURCES.items()],
                  provenance=PROVENANCE_DIR, row_settings=ROW_SETTINGS_FILE,
                  prompts_dir=PROMPTS_DIR)
    path.write_text(text, encoding="utf-8")
