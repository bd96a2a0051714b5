"""The reference server over real HTTP, called through the real client and the four calls."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from refsav_pipeline.llm import calls
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.llm.errors import AnswerRejected, ModelCallError
from refsav_pipeline.llm.session import ModelSession
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import (
    box_frames,
    contour_frame,
    crop,
    fast_client,
    masked_frame,
    models_at,
    object_frame,
    to_jpeg,
)


@pytest.fixture(scope="module")
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(ModelsConfig(), ReferenceServerConfig(port=0)) as srv:
        yield srv


@pytest.fixture
def session(server: ReferenceServer, tmp_path: Path) -> Iterator[ModelSession]:
    s = ModelSession(models_at(server.url), fast_client(), tmp_path)
    yield s
    s.close()


def test_models_endpoint_lists_config_names(server: ReferenceServer) -> None:
    r = httpx.get(f"{server.url}/models", trust_env=False)
    names = {m["id"] for m in r.json()["data"]}
    assert names == {"OpenGVLab/InternVL2-Llama3-76B", "Qwen/Qwen2-72B-Instruct"}


@pytest.mark.parametrize("color,center,where", [
    ("red", (50, 40), "top left"), ("blue", (160, 120), "center"),
    ("green", (270, 200), "bottom right"), ("purple", (160, 200), "bottom"),
])
def test_object_captions_name_colour_and_place(session: ModelSession, color: str,
                                              center: tuple[int, int], where: str) -> None:
    frame, mask = object_frame(color, *center, r=25)
    res = session.run(calls.describe_object(session, to_jpeg(crop(frame, mask)),
                                            to_jpeg(masked_frame(frame, mask))))
    assert res.crop.text == f"A {color} object in the center of the image."
    placed = "center of the image" if where == "center" else f"{where} part of the image"
    assert res.masked.text == f"A {color} object in the {placed}."
    for r in (res.crop, res.masked):
        assert r.model == "OpenGVLab/InternVL2-Llama3-76B" and not r.cached
        assert r.usage.prompt_tokens > 256 and r.usage.completion_tokens > 0
        assert r.latency_s > 0
    assert (res.crop.prompt_id, res.masked.prompt_id) == ("object_caption_crop",
                                                         "object_caption_masked")


def test_wrong_crop_shows_in_caption(session: ModelSession) -> None:
    """A crop of the wrong object (or of nothing) is visible in the text, and that text is a
    refusal, which the answer checks reject rather than keep as a caption."""
    frame, mask = object_frame("cyan", 100, 100)
    empty = masked_frame(frame, mask * False)
    res = session.run(calls.describe_object(session, to_jpeg(frame),
                                            to_jpeg(masked_frame(frame, mask))))
    assert "cyan" in res.masked.text
    with pytest.raises(AnswerRejected) as info:
        session.run(calls.describe_object(session, to_jpeg(empty),
                                          to_jpeg(masked_frame(frame, mask))))
    assert info.value.kind == "refusal" and "cannot see any object" in (info.value.answer or "")
    assert info.value.failures == ["refusal"] * 3


def test_scene_names_what_is_inside_the_contour(session: ModelSession) -> None:
    frame, mask = object_frame("orange", 250, 60, r=30)
    res = session.run(calls.describe_scene(session, to_jpeg(contour_frame(frame, mask)),
                                           "An orange object."))
    assert res.text == "The orange object is in the top right part of the frame."
    assert res.prompt_id == "scene_caption" and res.prompt_version == 1


@pytest.mark.parametrize("path,direction,reverse", [
    ([(40 + 30 * i, 120) for i in range(8)], "right", "left"),
    ([(160, 200 - 20 * i) for i in range(8)], "up", "down"),
])
def test_video_motion_direction_and_reversal(session: ModelSession, path: list[tuple[int, int]],
                                             direction: str, reverse: str) -> None:
    frames = box_frames("magenta", path)
    fwd = session.run(calls.describe_video(session, frames, "scene"))
    back = session.run(calls.describe_video(session, frames[::-1], "scene"))
    assert fwd.text == f"The magenta object moves {direction} across the video."
    assert back.text == f"The magenta object moves {reverse} across the video."


def test_video_still(session: ModelSession) -> None:
    frames = box_frames("white", [(160 + (i % 2), 120) for i in range(8)])
    res = session.run(calls.describe_video(session, frames, "scene"))
    assert res.text == "The white object stays still across the video."


def test_judge_flags_different_colours(session: ModelSession) -> None:
    bad = session.run(calls.judge_consistency(session, "A red object in the center.",
                                              "A blue object in the top left part."))
    assert bad.consistent is False and "red" in bad.reason and "blue" in bad.reason
    assert bad.description == "" and bad.model == "Qwen/Qwen2-72B-Instruct"
    good = session.run(calls.judge_consistency(session, "A red object in the center.",
                                               "A red object in the top left part."))
    assert good.consistent is True
    assert good.description == "A red object in the top left part."


def test_server_enforces_image_limit_like_vllm(session: ModelSession) -> None:
    """9 frames > limit_mm_per_prompt {image: 8}: the prompt refuses before any HTTP."""
    frames = box_frames("red", [(40 + 20 * i, 120) for i in range(9)])
    with pytest.raises(ModelCallError) as ei:
        session.run(calls.describe_video(session, frames, "scene", video_id="v1",
                                         masklet_id=3))
    assert ei.value.kind == "bad_input" and str(ei.value).startswith("video v1 masklet 3: ")


def test_raw_http_rejects_too_many_images_and_unknown_model(server: ReferenceServer) -> None:
    from refsav_pipeline.llm.client import jpeg_part

    frames = box_frames("red", [(40 + 20 * i, 120) for i in range(9)])
    body = {"model": "OpenGVLab/InternVL2-Llama3-76B",
            "messages": [{"role": "user", "content": [*map(jpeg_part, frames),
                                                      {"type": "text", "text": "hi"}]}]}
    r = httpx.post(f"{server.url}/chat/completions", json=body, trust_env=False)
    assert r.status_code == 400 and "At most 8" in r.text
    r = httpx.post(f"{server.url}/chat/completions", json={**body, "model": "nope"},
                   trust_env=False)
    assert r.status_code == 404


def test_concurrent_calls_are_deterministic(session: ModelSession) -> None:
    frame, mask = object_frame("green", 60, 180)
    jpg = to_jpeg(masked_frame(frame, mask))

    async def many() -> list[str]:
        # distinct crops (different sizes) so the cache does not answer them
        rs = await asyncio.gather(*(
            calls.describe_object(session, to_jpeg(crop(frame, mask, margin=m)), jpg)
            for m in range(6)))
        return [r.masked.text for r in rs] + [r.crop.text for r in rs]

    texts = session.run(many())
    assert set(texts[:6]) == {"A green object in the bottom left part of the image."}
    assert set(texts[6:]) == {"A green object in the center of the image."}
