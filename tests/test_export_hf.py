"""``refsav export hf``: the folder read back with ``datasets`` and ``huggingface_hub`` (their own
loaders and card classes), against the run it came from, the Sa2VA export and the report.

Most tests use a fake run (``export_data.make_export``: rows, a reviewed benchmark and the Sa2VA
export); the slow ones use a whole pipeline run against the reference server, which is the
only kind of run with a ``config.json`` for the card to show.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from export_data import make_export, write_review_inputs
from huggingface_hub import DatasetCard, DatasetCardData
from pipeline_helpers import config_for, refsav_argv
from typer.testing import CliRunner

from refsav_pipeline.cli import app
from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.export.hf_dataset import BUILD_PREFIX, IMAGE_COLUMNS, features
from refsav_pipeline.llm.prompts import DEFAULT_PROMPTS_DIR, load_prompt
from refsav_pipeline.pipeline.cli import free_port, reference_server
from refsav_pipeline.pipeline.driver import execute, prepare_output, save_config
from refsav_pipeline.pipeline.plan import load_plan, save_plan
from refsav_pipeline.records import read_rows
from refsav_pipeline.sav.chunks import format_chunks, parse_chunks

SHARD_SIZE = "60KB"
"""Small enough that the image export needs several Parquet files per split."""


def export(out: Path, to: Path, *args: str, code: int = 0) -> str:
    res = CliRunner().invoke(app, ["export", "hf", "--out", str(out), "--to", str(to), *args])
    assert res.exit_code == code, res.output
    return res.output


def load(folder: Path, cache: Path) -> datasets.DatasetDict:
    """The folder as anyone loads it (``datasets`` reads the card's configs and features)."""
    return datasets.load_dataset(str(folder), cache_dir=str(cache))


def prose(folder: Path) -> str:
    """The card's text with every run of whitespace as one space (line breaks are layout)."""
    return " ".join((folder / "README.md").read_text().split())


def front_matter(folder: Path) -> dict[str, Any]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def report_images(out: Path) -> dict[tuple[str, str, int], dict[str, bytes]]:
    """Each gallery item's three images, by row key, as ``refsav report`` wrote them."""
    res = CliRunner().invoke(app, ["report", "--out", str(out), "--gallery", "1000"])
    assert res.exit_code == 0, res.output
    page = (out / "report" / "index.html").read_text()
    items = re.findall(r'<div class="item" data-key="([^"]+)">.*?class="crop" src="([^"]+)"'
                       r'.*?class="contour" src="([^"]+)".*?class="strip" src="([^"]+)"', page)
    found = {}
    for key, *srcs in items:
        video, kind, masklet = key.split()
        found[(video, kind, int(masklet))] = {
            name: (out / "report" / src).read_bytes()
            for name, src in zip(("object_crop", "contour_image", "frames_strip"), srcs,
                                 strict=True)}
    return found


def dataset_images(ds: datasets.DatasetDict) -> dict[tuple[str, str, int], dict[str, bytes]]:
    out = {}
    for split in ds.values():
        plain = split.cast_column("object_crop", datasets.Image(decode=False)) \
            .cast_column("contour_image", datasets.Image(decode=False)) \
            .cast_column("frames_strip", datasets.Image(decode=False))
        for r in plain:
            out[(r["video_id"], r["masklet_type"], r["masklet_id"])] = {
                c: r[c]["bytes"] for c in IMAGE_COLUMNS}
    return out


@pytest.fixture(scope="module")
def ex(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fake run with a reviewed benchmark, its Sa2VA export and its dataset folder."""
    base = tmp_path_factory.mktemp("hf")
    made = make_export(synth_root, base)
    export(made["out"], base / "hf")
    return {**made, "hf": base / "hf", "cache": base / "cache"}


@pytest.fixture(scope="module")
def with_images(ex: dict) -> Path:
    dest = ex["out"].parent / "hf-jpeg"
    export(ex["out"], dest, "--images", "jpeg", "--max-shard-size", SHARD_SIZE)
    return dest


def test_load_dataset_reads_both_splits_with_the_declared_features(ex: dict) -> None:
    ds = load(ex["hf"], ex["cache"])
    assert set(ds) == {"train", "benchmark"}
    reviewed = {r["video_id"] for r in ex["records"]}
    train = [r for r in ex["rows"] if r.status == "ok"
             and r.video_id not in ex["bench_videos"] | reviewed]
    assert ds["train"].num_rows == len(train) > 0
    assert ds["benchmark"].num_rows == len(ex["records"])
    for split in ds.values():
        assert split.features == features("none")
    got = {(r["video_id"], r["masklet_type"], r["masklet_id"]): r for r in ds["train"]}
    for r in train:
        row = got[(r.video_id, r.masklet_type, r.masklet_id)]
        assert (row["object_expression"], row["scene_expression"], row["video_expression"]) \
            == (r.object_caption, r.scene_caption, r.video_caption)
        assert row["sampled_frames"] == r.sampled_frames and row["bbox"] == r.bbox
        assert row["sav_chunk"] == "sav_000" and row["review_status"] == "not_reviewed"
        assert row["short_expressions"] == []
    bench = {(r["video_id"], r["masklet_type"], r["masklet_id"]): r for r in ds["benchmark"]}
    for rec in ex["records"]:  # the reviewers' final texts, not the pipeline's
        row = bench[(rec["video_id"], rec["masklet_type"], rec["masklet_id"])]
        assert row["video_expression"] == rec["video_caption"]
        assert row["object_expression"] == rec["object_caption"]
        assert row["short_expressions"] == rec["short_expressions"]
        assert row["review_status"] == "accepted_edited"


def test_a_benchmark_video_never_appears_in_train(ex: dict) -> None:
    ds = load(ex["hf"], ex["cache"])
    train_videos = set(ds["train"]["video_id"])
    assert set(ds["benchmark"]["video_id"]) <= ex["bench_videos"]
    assert not train_videos & ex["bench_videos"]
    # the same split as the Sa2VA export: its objects are exactly the train rows here
    sa2va = json.loads((ex["dest"] / "Ref-SAV.json").read_text())
    objects = {(e["video_path"], e["anno_path"], int(i))
               for e in sa2va.values() for i in e["objects"]}
    assert objects == {(r["video_path"], r["anno_path"], r["masklet_index"])
                       for r in ds["train"]}


def test_held_out_chunks_leave_train_empty(ex: dict, tmp_path: Path) -> None:
    output = export(ex["out"], tmp_path / "all", "--exclude-chunks", "sav_000")
    assert "warning: the train split has no rows: left out" in output
    assert sorted(p.name for p in (tmp_path / "all" / "data").iterdir()) == \
        ["benchmark-00000-of-00001.parquet"]
    assert list(load(tmp_path / "all", tmp_path / "cache")) == ["benchmark"]
    output = export(ex["out"], tmp_path / "train", "--part", "train", "--exclude-chunks",
                    "sav_000", code=2)
    assert output.startswith("error: nothing to export") and "in held-out chunks" in output
    assert not (tmp_path / "train").exists()


def test_card_yaml_validates_with_huggingface_hub(ex: dict) -> None:
    card = DatasetCard.load(ex["hf"] / "README.md")
    data = card.data
    assert isinstance(data, DatasetCardData)
    assert data.license == "cc-by-4.0" and data.language == ["en"]
    assert data.task_categories == ["video-text-to-text", "image-segmentation"]
    assert data.size_categories == ["n<1K"] and data.pretty_name
    again = DatasetCardData(**data.to_dict())  # the Hub's own parsing of the same YAML
    assert again.to_dict() == data.to_dict()
    meta = front_matter(ex["hf"])
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"},
        {"split": "benchmark", "path": "data/benchmark-*"}]}]
    infos = datasets.info.DatasetInfosDict.from_dataset_card_data(data)
    assert infos["default"].features == features("none")
    ds = load(ex["hf"], ex["cache"])
    assert {s: i.num_examples for s, i in infos["default"].splits.items()} == \
        {s: d.num_rows for s, d in ds.items()}


def test_card_says_how_it_was_made_and_what_is_in_it(ex: dict) -> None:
    text = (ex["hf"] / "README.md").read_text()
    rows = ex["rows"]
    failed = sum(r.status == "failed" for r in rows)
    assert f"| `ok` | – | {sum(r.status == 'ok' for r in rows)} |" in text
    assert f"| `failed` | server_error | {failed} |" in text
    assert "`OpenGVLab/InternVL2-Llama3-76B`" in text and "`Qwen/Qwen2-72B-Instruct`" in text
    named = {f"{ref.replace('@v', '.v')}.yaml" for r in rows
             for ref in r.prompt_versions.model_dump().values() if ref}
    assert len(named) == 5  # the five calls (a contrastive re-caption would add its prompt)
    for path in (DEFAULT_PROMPTS_DIR / name for name in sorted(named)):  # each file the rows name
        assert hashlib.sha256(path.read_bytes()).hexdigest() in text
        assert (ex["hf"] / "provenance" / "prompts" / path.name).read_bytes() \
            == path.read_bytes()
    flat = prose(ex["hf"])
    assert "Config fingerprint `test0000fingerpr` (the run's `config.json` was not found" \
        in flat  # a fake run has none: the card says so
    assert "83.6" in text and "CC BY 4.0" in text and "load_dataset(" in text
    ds = load(ex["hf"], ex["cache"])
    words = [len(t.split()) for t in ds["train"]["video_expression"]]
    assert f"| train | `video_expression` | {len(words)} | {sum(words) / len(words):.1f} |" \
        in text
    shorts = sum(len(r["short_expressions"]) for r in ex["records"])
    assert f"{len(ex['records'])} objects passed review ({len(ex['records'])} " \
           f"accepted_edited), with {shorts} short expressions written by people" in flat
    assert "(4 accepted, 1 rejected)" in flat  # export_data rejects the first sample


def test_images_are_the_reports_bytes(ex: dict, with_images: Path) -> None:
    ds = load(with_images, ex["cache"])
    for split in ds.values():
        assert split.features == features("jpeg")
    got = dataset_images(ds)
    shown = report_images(ex["out"])
    assert len(got) == ds["train"].num_rows + ds["benchmark"].num_rows
    assert set(got) <= set(shown)
    for key, images in got.items():
        assert images == shown[key], key


def test_images_follow_the_runs_own_render_settings(ex: dict, with_images: Path,
                                                    tmp_path: Path) -> None:
    # A run drawn with other settings: the report and the dataset both use its config.json.
    out = tmp_path / "out"
    shutil.copytree(ex["out"], out)
    cfg = PipelineConfig()
    cfg.render.contour_thickness, cfg.render.box_style = 7, "corners"
    save_config(out, cfg)
    export(out, tmp_path / "hf", "--images", "jpeg")
    got = dataset_images(load(tmp_path / "hf", tmp_path / "cache"))
    shown = report_images(out)
    default = dataset_images(load(with_images, ex["cache"]))
    for key, images in got.items():
        assert images == shown[key], key
        assert images["object_crop"] == default[key]["object_crop"]  # no setting changed
        assert images["contour_image"] != default[key]["contour_image"]
        assert images["frames_strip"] != default[key]["frames_strip"]


def test_a_missing_prompt_file_is_said_not_fatal(ex: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(ex["out"], out)
    cfg = PipelineConfig()
    cfg.models.prompts.dir = str(tmp_path / "no-prompts")
    save_config(out, cfg)
    output = export(out, tmp_path / "hf")
    assert "warning: prompt video_caption@v1 (video): no file" in " ".join(output.split())
    card = (tmp_path / "hf" / "README.md").read_text()
    row = next(line for line in card.splitlines()
               if line.startswith("| `video` | `video_caption@v1` |"))
    assert "file not found" in row
    assert not (tmp_path / "hf" / "provenance" / "prompts").exists()
    assert load(tmp_path / "hf", tmp_path / "cache")["train"].num_rows > 0


def test_shards_split_at_max_size(ex: dict, with_images: Path) -> None:
    for split in ("train", "benchmark"):
        files = sorted((with_images / "data").glob(f"{split}-*.parquet"))
        n = len(files)
        assert n >= 2
        assert [f.name for f in files] == [f"{split}-{i:05d}-of-{n:05d}.parquet"
                                           for i in range(n)]
        assert all(pq.read_metadata(f).num_rows > 0 for f in files)
    ds = load(with_images, ex["cache"])
    plain = load(ex["hf"], ex["cache"])
    for split in ("train", "benchmark"):
        assert ds[split].remove_columns(list(IMAGE_COLUMNS)).to_list() == \
            plain[split].to_list()


def test_export_is_deterministic(ex: dict, tmp_path: Path) -> None:
    export(ex["out"], tmp_path / "again")
    files = sorted(p.relative_to(ex["hf"]) for p in ex["hf"].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again")
                           for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:
        assert (ex["hf"] / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def _no_shards(ex: dict, tmp_path: Path) -> Path:
    out = tmp_path / "empty-run"
    out.mkdir()
    shutil.copy(ex["out"] / "plan.json", out / "plan.json")
    return out


def _no_sav_root(ex: dict, tmp_path: Path) -> Path:
    out = tmp_path / "moved-run"
    shutil.copytree(ex["out"], out)
    plan = load_plan(out)
    save_plan(out, plan.model_copy(update={"sav_root": str(tmp_path / "gone")}))
    return out


def _no_review(ex: dict, tmp_path: Path) -> Path:
    out = tmp_path / "unreviewed"
    shutil.copytree(ex["out"], out)
    (out / "review" / "validated.parquet").unlink()
    return out


def _missing(ex: dict, tmp_path: Path) -> Path:
    return tmp_path / "nope"


def _the_run(ex: dict, tmp_path: Path) -> Path:
    return ex["out"]


@pytest.mark.parametrize(("make_run", "args", "says"), [
    (_missing, [], "does not exist"),
    (_no_shards, [], "has no finished shards"),
    (_no_sav_root, ["--images", "jpeg"], "is not a folder: --images jpeg draws"),
    (_no_review, ["--part", "benchmark"], "for the benchmark part"),
    (_the_run, ["--max-shard-size", "huge"], "--max-shard-size 'huge'"),
    (_the_run, ["--max-shard-size", "0"], "more than 0 bytes"),
    (_the_run, ["--exclude-chunks", "sav_9-sav_1"], "--exclude-chunks"),
    (_the_run, ["--push", "not a repo/id!"], "not a Hub repository id"),
], ids=["no-run", "no-shards", "no-sav-root", "no-review", "bad-size", "zero-size",
        "bad-chunks", "bad-repo"])
def test_inputs_are_checked_before_anything_is_written(ex: dict, tmp_path: Path, make_run,
                                                       args: list[str], says: str) -> None:
    dest = tmp_path / "dest"
    output = export(make_run(ex, tmp_path), dest, *args, code=2)
    assert output.startswith("error: ") and output.count("\n") == 1, output
    assert says in output
    assert not dest.exists()


def test_a_folder_in_the_way_is_kept_unless_forced(ex: dict, tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    (dest / "data").mkdir(parents=True)
    (dest / "data" / "old-00000-of-00001.parquet").write_bytes(b"old")
    (dest / ".gitattributes").write_text("*.parquet filter=lfs\n")
    output = export(ex["out"], dest, code=2)
    assert output.startswith("error: --to") and "--force" in output and output.count("\n") == 1
    assert (dest / "data" / "old-00000-of-00001.parquet").read_bytes() == b"old"
    export(ex["out"], dest, "--force")
    assert (dest / ".gitattributes").read_text() == "*.parquet filter=lfs\n"  # not ours
    assert sorted(p.name for p in (dest / "data").iterdir()) == \
        ["benchmark-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    assert not [p for p in dest.iterdir() if p.name.startswith(BUILD_PREFIX)]
    (tmp_path / "file").write_text("x")
    output = export(ex["out"], tmp_path / "file", code=2)
    assert "is a file" in output


def test_push_without_network_fails_with_one_line(ex: dict, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # closed: nothing leaves the machine
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"))
    dest = tmp_path / "dest"
    for args in (["--out", str(ex["out"])], []):  # write then push; push what is there
        proc = subprocess.run(refsav_argv("export", "hf", *args, "--to", str(dest), "--push",
                                          "someone/ref-sav"),
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: cannot reach the Hugging Face Hub at {endpoint}")
        assert f"push it again with `refsav export hf --to {dest} --push someone/ref-sav`" \
            in lines[0]
        assert (dest / "README.md").is_file()


def test_push_needs_a_written_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", "hf", "--to", str(tmp_path), "--push", "a/b"])
    assert res.exit_code == 2 and "has no README.md and data/*.parquet" in res.output
    res = CliRunner().invoke(app, ["export", "hf", "--to", str(tmp_path)])
    assert res.exit_code == 2 and "pass --out RUN" in res.output


def test_chunk_lists_round_trip() -> None:
    chunks = ["sav_000", "sav_001", "sav_002", "sav_010", "sav_011", "sav_050"]
    assert format_chunks(chunks) == "sav_000-sav_002,sav_010-sav_011,sav_050"
    assert parse_chunks(format_chunks(chunks)) == chunks
    assert format_chunks([]) == ""


# -- a whole pipeline run (reference server, Ray): the card against the run's own config ----


@pytest.fixture(scope="module")
def real(synth_root: Path, local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("hf-real")
    out = base / "out"
    with reference_server(free_port()) as url:
        cfg = config_for(url)
        prepare_output(synth_root, out, cfg)
        execute(out, cfg, show_progress=False)
    write_review_inputs(out)
    export(out, base / "hf", "--images", "jpeg")
    return {"out": out, "cfg": cfg, "hf": base / "hf", "cache": base / "cache"}


@pytest.mark.slow
def test_card_shows_the_runs_own_settings(real: dict) -> None:
    cfg, hf = real["cfg"], real["hf"]
    plan = load_plan(real["out"])
    settings = (hf / "provenance" / "row_settings.json").read_bytes()
    assert hashlib.sha256(settings).hexdigest()[:16] == plan.config_fingerprint \
        == cfg.fingerprint()
    assert json.loads(settings) == cfg.row_settings()
    text, flat = (hf / "README.md").read_text(), prose(hf)
    assert "was not found" not in text
    s = cfg.selection
    assert f"Masklets taken: types {', '.join(s.masklet_types)}, visible in at least " \
           f"{s.min_visible_frames} annotated frame(s), with at least {s.min_area} pixel(s)" \
        in flat
    assert f"*Video.* {cfg.frames.num_sampled} frames sampled" in flat
    rows = read_rows(real["out"]).to_pylist()
    for call, ref in rows[0]["prompt_versions"].items():
        tpl = load_prompt(getattr(cfg.models.prompts, call))
        assert tpl.ref == ref
        model = getattr(cfg.models, tpl.model)
        sent = {**model.sampling.as_body(), **tpl.sampling}
        (row,) = [line for line in text.splitlines()
                  if line.startswith(f"| `{call}` | `{ref}` |")]  # the prompt table's row
        assert f"`{tpl.digest}`" in row
        assert json.dumps(sent, sort_keys=True, separators=(", ", ": ")) in row
    assert f"| captioner | `{cfg.models.captioner.model}` |" in text


@pytest.mark.slow
def test_real_run_loads_with_the_reports_images(real: dict) -> None:
    ds = load(real["hf"], real["cache"])
    assert ds["train"].num_rows > 0 and ds["benchmark"].num_rows > 0
    assert not set(ds["train"]["video_id"]) & set(ds["benchmark"]["video_id"])
    got = dataset_images(ds)
    shown = report_images(real["out"])
    assert got and all(images == shown[key] for key, images in got.items())
