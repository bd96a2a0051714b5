"""Request budget: every request fits its model's context before it is sent, or fails its row."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm import calls
from refsav_pipeline.llm.budget import _sof_size, budget_for, image_tokens, internvl_grid, jpeg_size
from refsav_pipeline.llm.errors import ModelCallError
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import background, fast_client, models_at, to_jpeg

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "configs" / "refsav-internvl2-76b-qwen2-72b.yaml"


def test_internvl_tiling_counts() -> None:
    assert internvl_grid(448, 448, 6) == (1, 1)
    assert image_tokens(448, 448, 6) == 256 + 2  # one tile, no thumbnail
    assert internvl_grid(1920, 1080, 2) == (2, 1)
    assert image_tokens(1920, 1080, 2) == 3 * 256 + 2  # 2 tiles + thumbnail
    assert internvl_grid(1920, 1080, 6) == (2, 1)  # 2.0 is closer to 16:9 than 1.5
    assert internvl_grid(1536, 1024, 6) == (3, 2)
    assert image_tokens(1536, 1024, 6) == 7 * 256 + 2
    assert internvl_grid(1024, 1536, 6) == (2, 3)
    # never more than max_dynamic_patch tiles (+ thumbnail), whatever the shape
    for w, h in [(100, 3000), (4000, 300), (1024, 1024), (33, 32)]:
        for n in (1, 2, 6, 12):
            c, r = internvl_grid(w, h, n)
            assert c * r <= n
            assert image_tokens(w, h, n) <= (n + (n > 1)) * 256 + 2


def _largest_video_budget(cfg: PipelineConfig, session: ModelSession) -> tuple[int, int]:
    """(tokens counted, max_model_len) for 8 full-size frames and the longest scene caption."""
    tpl = session.prompts["video"]
    side = cfg.render.max_side
    frames = [to_jpeg(background(side * 9 // 16, side, seed=i)) for i in range(8)]
    # the scene call's full completion budget, at 4 characters a token
    scene_budget = (session.prompts["scene"].sampling.get("max_completion_tokens")
                    or cfg.models.captioner.sampling.max_completion_tokens)
    scene = ("The red object in the yellow outline is left of the tree. " * 200)[
        :scene_budget * 4]
    system, user = tpl.render(8, scene_description=scene)
    m = cfg.models.captioner
    sampling = {**m.sampling.as_body(), **tpl.sampling}
    mm = {**m.mm_processor_kwargs, **tpl.mm_processor_kwargs}
    b = budget_for(m, [system or "", user], frames, sampling, mm)
    assert b.image_tokens == 8 * (3 * 256 + 2)  # 2 tiles + thumbnail per 16:9 frame
    assert b.completion_tokens == 640
    return b.total, b.max_model_len


def test_largest_video_call_fits_8k_with_room_to_spare() -> None:
    cfg = PipelineConfig.load(REAL)
    with ModelSession(cfg.models, cfg.client) as s:
        total, limit = _largest_video_budget(cfg, s)
    assert limit == 8192
    assert total <= limit - 256, (total, limit)


def test_request_that_cannot_fit_fails_its_row_without_reaching_the_server(
        tmp_path: Path) -> None:
    cfg = PipelineConfig.load(REAL)
    small = cfg.models.captioner.vllm.model_copy(update={"max_model_len": 4096})
    models = cfg.models.model_copy(update={
        "captioner": cfg.models.captioner.model_copy(update={"vllm": small})})
    with ReferenceServer(models) as srv, \
            ModelSession(models_at(srv.url, models), fast_client(), tmp_path) as s:
        frames = [to_jpeg(background(576, 1024, seed=i)) for i in range(8)]
        with pytest.raises(ModelCallError) as ei:
            s.run(calls.describe_video(s, frames, "A red ball.", video_id="v9", masklet_id=2))
        assert srv.stats.requests["chat_completions"] == 0
    e = ei.value
    assert e.kind == "request_too_long"
    msg = str(e)
    assert msg.startswith("video v9 masklet 2: video_caption@v1 request does not fit")
    assert "6160 image" in msg and "max_completion_tokens 640" in msg
    assert "> max_model_len 4096" in msg


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"optimize": True},
                                     {"subsampling": 0, "quality": 95},
                                     {"exif": b"Exif\x00\x00" + b"\x00" * 64,
                                      "icc_profile": b"\x01" * 3000}])
def test_jpeg_size_reads_the_header_as_pil_does(mode: str, options: dict) -> None:
    """The marker walk gives PIL's size for every kind of JPEG a renderer or camera writes."""
    for w, h in [(1, 1), (17, 300), (848, 480), (1280, 720), (4000, 3)]:
        buf = io.BytesIO()
        Image.new(mode, (w, h)).save(buf, "JPEG", **options)
        data = buf.getvalue()
        assert _sof_size(data) == (w, h)
        assert jpeg_size(data) == Image.open(io.BytesIO(data)).size
    ok, enc = cv2.imencode(".jpg", np.zeros((96, 128, 3), np.uint8))
    assert ok and _sof_size(enc.tobytes()) == (128, 96)


def test_jpeg_size_leaves_what_is_not_a_jpeg_to_pil() -> None:
    png = io.BytesIO()
    Image.new("RGB", (30, 20)).save(png, "PNG")
    assert _sof_size(png.getvalue()) is None
    assert jpeg_size(png.getvalue()) == (30, 20)  # PIL reads it
    jpeg = io.BytesIO()
    Image.new("RGB", (30, 20)).save(jpeg, "JPEG")
    for broken in (b"", b"\xff\xd8", jpeg.getvalue()[:40], b"\xff\xd8\xff\xda\x00\x02",
                   b"not an image at all"):
        assert _sof_size(broken) is None
        with pytest.raises((UnidentifiedImageError, OSError)):
            jpeg_size(broken)
