"""The reference server keeps vLLM's contract, and the shipped real-model config runs against it.

The end-to-end run here also captures the exact request bodies of all five calls to
``build/contract/requests.json``: the contract tier (tests/contract, vLLM's own code in its own
venv, run by scripts/contract after this tier) validates them with vLLM's request models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm import calls
from refsav_pipeline.llm.client import jpeg_part
from refsav_pipeline.llm.errors import ModelCallError
from refsav_pipeline.llm.prompts import load_prompt
from refsav_pipeline.llm.session import PROMPT_KEYS, ModelSession
from refsav_pipeline.pipeline.cli import with_endpoints
from refsav_pipeline.pipeline.driver import execute, prepare_output
from refsav_pipeline.records import read_rows
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.server import ReferenceServer
from refsav_pipeline.reference.testing import (
    background,
    crop,
    fast_client,
    models_at,
    object_frame,
    to_jpeg,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "configs" / "refsav-internvl2-76b-qwen2-72b.yaml"
CAPTURE = ROOT / "build" / "contract" / "requests.json"
CAPTIONER = "InternVL2-Llama3-76B"


def _post(url: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json=body, trust_env=False, timeout=30)


def _image_body(n: int = 1, text: str = "<image>\nWhat is this?", **extra: object) -> dict:
    frame, mask = object_frame("orange", 100, 100)
    parts = [jpeg_part(to_jpeg(crop(frame, mask)))] * n
    return {"model": CAPTIONER, "messages": [{"role": "user", "content": [
        *parts, {"type": "text", "text": text}]}], "max_completion_tokens": 64, **extra}


@pytest.fixture(scope="module")
def real() -> PipelineConfig:
    return PipelineConfig.load(REAL)


def test_mm_processor_kwargs_need_the_trust_option(real: PipelineConfig,
                                                   tmp_path: Path) -> None:
    body = _image_body(mm_processor_kwargs={"max_dynamic_patch": 2})
    untrusted = ReferenceServerConfig(port=0, trust_request_mm_kwargs=False)
    with ReferenceServer(real.models, untrusted) as srv:
        r = _post(srv.url, body)
        assert r.status_code == 400
        assert "Per-request mm_processor_kwargs are disabled by default" in r.text
        assert "--trust-request-mm-kwargs" in r.text
        assert _post(srv.url, {**body, "mm_processor_kwargs": {}}).status_code == 200
        # the pipeline's captioner calls end as model_bad_request rows, not retried
        with ModelSession(models_at(srv.url, real.models), fast_client(), tmp_path) as s:
            frame, mask = object_frame("red", 120, 90)
            with pytest.raises(ModelCallError) as ei:
                s.run(calls.describe_scene(s, to_jpeg(frame), "obj", video_id="v",
                                           masklet_id=1))
        assert ei.value.kind == "model_bad_request"
    # by default the server trusts exactly as `refsav serve vllm` would start each model
    no_flag = real.models.captioner.vllm.model_copy(update={"trust_request_mm_kwargs": False})
    models = real.models.model_copy(update={
        "captioner": real.models.captioner.model_copy(update={"vllm": no_flag})})
    with ReferenceServer(models) as srv:
        assert _post(srv.url, body).status_code == 400
    with ReferenceServer(real.models) as srv:
        assert _post(srv.url, body).status_code == 200


def test_too_long_prompt_and_too_many_images_are_refused_like_vllm(
        real: PipelineConfig) -> None:
    with ReferenceServer(real.models) as srv:
        big = to_jpeg(background(1024, 1536))  # 3×2 tiles + thumbnail at the default 12
        r = _post(srv.url, _image_body(text="<image>\n" + "word " * 40000))
        assert r.status_code == 400
        assert "This model's maximum context length is 8192 tokens. However, your prompt " \
               "contains" in r.text
        body = _image_body(8, text="\n".join(f"Image-{i}: <image>" for i in range(1, 9)))
        for part in body["messages"][0]["content"][:8]:
            part["image_url"]["url"] = jpeg_part(big)["image_url"]["url"]
        r = _post(srv.url, body)  # 8 × 1794 image tokens > 8192
        assert r.status_code == 400 and "maximum context length is 8192" in r.text
        r = _post(srv.url, _image_body(9, text="hi"))
        assert r.status_code == 400
        assert "At most 8 image(s) may be provided in one prompt." in r.text
        r = _post(srv.url, _image_body(max_completion_tokens=9000))
        assert r.status_code == 400
        assert "max_completion_tokens=9000 cannot be greater than max_model_len=8192" in r.text


def _call_of(body: dict) -> str:
    """Which prompt made this body: the longest literal run of each template is in its text."""
    text = "\n".join(p.get("text", "") if isinstance(p, dict) else p
                     for m in body["messages"]
                     for p in ([m["content"]] if isinstance(m["content"], str)
                               else m["content"]))
    prompts = PipelineConfig().models.prompts
    found = []
    for key in PROMPT_KEYS:
        tpl = load_prompt(getattr(prompts, key))
        literal = max(re.split(r"\$\{[^}]+\}", tpl.user), key=len).strip()
        if literal in text:
            found.append(key)
    assert len(found) == 1, found
    return found[0]


def test_shipped_real_config_runs_against_the_contract_server(
        real: PipelineConfig, synth_root: Path, local_ray: None, tmp_path: Path) -> None:
    """configs/refsav-internvl2-76b-qwen2-72b.yaml as shipped, endpoints on loopback."""
    with ReferenceServer(real.models, record_bodies=True) as srv:
        cfg = with_endpoints(real, srv.url)
        out = tmp_path / "run"
        prepare_output(synth_root, out, cfg)
        execute(out, cfg, show_progress=False)
        bodies = list(srv.stats.bodies or [])
    rows = read_rows(out).to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows), \
        [r["error"] for r in rows if r["status"] != "ok"]
    largest: dict[str, dict] = {}
    for b in bodies:
        key = _call_of(b)
        if len(json.dumps(b)) > len(json.dumps(largest.get(key, {}))):
            largest[key] = b
    # every call of a clean run; the contrastive re-caption is asked only for objects whose
    # expressions collide, which the synthetic videos' distinct objects never do
    assert sorted(largest) == sorted(k for k in PROMPT_KEYS if k != "video_contrastive")
    video = largest["video"]
    assert sum(p.get("type") == "image_url" for p in video["messages"][-1]["content"]) == 8
    for b in largest.values():
        assert "max_tokens" not in b and b["max_completion_tokens"] > 0
    CAPTURE.parent.mkdir(parents=True, exist_ok=True)
    CAPTURE.write_text(json.dumps({"config": str(REAL.relative_to(ROOT)),
                                   "requests": largest}, indent=1))

