"""Offline reference server: the OpenAI chat-completions API of ``vllm serve``, without a model.

Answers are computed from the images received (see ``reference_vision``), so the whole
pipeline runs and is tested without GPUs, and wrong crops, frames or frame order show up in
the captions. Which call a request is, is inferred from what a model would see: no image →
text task (the judge, if it carries two descriptions); one image with yellow marks → scene;
one image without → object; several images → video. Latency and faults (HTTP 500, hangs,
malformed judge JSON) can be injected; successful answers are always deterministic. Its answers
are those of a well-behaved model (no words about the yellow marks, a distinct video caption
per object of a synthetic video) unless its bad mode (``reference.bad_answers``) is on.

It keeps vLLM's contract where the pipeline relies on it, with vLLM's wording, as ``vllm serve``
would be started by ``refsav serve vllm`` for the same config: per-request
``mm_processor_kwargs`` are refused unless the model is served with the trust option, as are
prompts longer than the model's ``max_model_len`` and more images than its per-prompt limit.
So the end-to-end tests fail where a real server would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from refsav_pipeline.colors import color_terms_in, highlight_mask
from refsav_pipeline.llm.budget import DEFAULT_MAX_DYNAMIC_PATCH, image_tokens
from refsav_pipeline.llm.config import ModelsConfig
from refsav_pipeline.llm.prompts import IMAGE_PLACEHOLDER
from refsav_pipeline.reference.bad_answers import bad_text, bad_verdict, draw
from refsav_pipeline.reference.config import ReferenceServerConfig
from refsav_pipeline.reference.vision import (
    decode_jpeg,
    has_highlight,
    motion_direction,
    see_object,
    see_outlined,
)
from refsav_pipeline.reference.vllm_metrics import Engine, VllmExporter

OWNER = "refsav-reference"
INLINE_IMAGE_BYTES = 8192
"""Requests with at most this many image bytes are answered on the event loop, not a thread."""


MM_KWARGS_REFUSED = (
    "Per-request mm_processor_kwargs are disabled by default because they can change "
    "multimodal preprocessing resource usage. Start the server with --trust-request-mm-kwargs "
    "only when clients are trusted.")
"""vLLM's message (vllm/entrypoints/generate/base/protocol.py) for untrusted request kwargs."""


@dataclass
class ServedModel:
    name: str
    image_limit: int | None  # None: no limit configured; 0: text-only
    max_model_len: int | None = None  # None: no length check
    trust_mm_kwargs: bool = True
    max_dynamic_patch: int = DEFAULT_MAX_DYNAMIC_PATCH  # the server's default processor kwargs


@dataclass
class ServerStats:
    """Counters readable over ``GET /stats`` (tests count requests here)."""

    requests: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)
    bodies: list[dict[str, Any]] | None = None  # every chat request body, when recording

    def as_dict(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "kinds": dict(self.kinds),
                "faults": dict(self.faults), "models": dict(self.models),
                "chat_completions": self.requests["chat_completions"]}

    def reset(self) -> None:
        for c in (self.requests, self.kinds, self.faults, self.models):
            c.clear()


def served_models(models: ModelsConfig,
                  cfg: ReferenceServerConfig | None = None) -> list[ServedModel]:
    """Each model as ``refsav serve vllm`` would start it (trust option: ``cfg`` may override)."""
    from refsav_pipeline.serve.vllm_serve import trusts_request_mm_kwargs

    trust = cfg.trust_request_mm_kwargs if cfg is not None else None
    out: dict[str, ServedModel] = {}
    for role in ("captioner", "judge"):
        m = getattr(models, role)
        if m.name in out:
            continue
        lim = m.vllm.limit_mm_per_prompt
        out[m.name] = ServedModel(
            m.name, lim.get("image", 0) if lim else 0, m.vllm.max_model_len,
            trust if trust is not None else trusts_request_mm_kwargs(models, role),
            int((m.vllm.mm_processor_kwargs or {}).get("max_dynamic_patch",
                                                       DEFAULT_MAX_DYNAMIC_PATCH)))
    return list(out.values())


def _error(status: int, message: str, typ: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": typ, "code": status}},
                        status_code=status)


def _split_content(messages: list[dict[str, Any]]) -> tuple[str, list[bytes]]:
    """All text (joined) and all images (in order) of the messages."""
    texts: list[str] = []
    images: list[bytes] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                m = re.match(r"data:image/[a-zA-Z]+;base64,(.*)", url, re.S)
                if not m:
                    raise ValueError("only base64 data URLs are supported offline")
                images.append(base64.b64decode(m.group(1)))
            else:
                raise ValueError(f"unsupported content part {part.get('type')!r}")
    return "\n".join(texts), images


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _place(pos: str, what: str) -> str:
    return f"in the center of the {what}" if pos == "center" else f"in the {pos} part of the {what}"


def _tag(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>\s*(.*?)\s*</{name}>", text, re.S)
    return m.group(1) if m else None


def answer(text: str, images: list[bytes]) -> tuple[str, str, dict[str, Any] | None]:
    """(kind, answer text, judge verdict or None): the deterministic "model"."""
    return answer_decoded(text, [decode_jpeg(i) for i in images])


def answer_decoded(text: str, rgbs: list[np.ndarray]) -> tuple[str, str, dict[str, Any] | None]:
    """``answer`` for images already decoded to RGB (the server decodes each image once)."""
    if not rgbs:
        a, b = _tag(text, "description_a"), _tag(text, "description_b")
        if a is None or b is None:
            return "text", "I can only answer about images or pairs of descriptions.", None
        ca, cb = color_terms_in(a), color_terms_in(b)
        consistent = set(ca) == set(cb)
        if consistent:
            reason = (f"Both descriptions name the colour {', '.join(ca)}." if ca
                      else "Neither description names a colour, and nothing contradicts.")
        else:
            reason = (f"Description A names {', '.join(ca) or 'no colour'} but description B "
                      f"names {', '.join(cb) or 'no colour'}.")
        verdict = {"consistent": consistent, "reason": reason,
                   "description": b if consistent else ""}
        return "judge", json.dumps(verdict), verdict
    if len(rgbs) >= 2:
        direction, seen = motion_direction(rgbs)
        if not seen:
            return "video", "I cannot find a yellow box in these frames.", None
        color = next((s.color for s in seen if s.color), None)
        subject = f"The {color} object" if color else "The object"
        verb = "stays still" if direction == "still" else f"moves {direction}"
        if _tag(text, "other_objects") is not None:  # contrastive: say what sets it apart
            return ("video", f"{subject} that starts {_place(seen[0].position, 'frame')} "
                    f"{verb} across the video, unlike the other objects.", None)
        return "video", f"{subject} {verb} across the video.", None
    rgb = rgbs[0]
    yellow = highlight_mask(rgb)  # once: has_highlight and see_outlined both need it
    if has_highlight(rgb, yellow):
        s = see_outlined(rgb, yellow)
        if s.color is None:
            return "scene", "I cannot find an outlined object in this frame.", None
        return "scene", f"The {s.color} object is {_place(s.position, 'frame')}.", None
    s = see_object(rgb)
    if s.color is None:
        return "object", "The image is completely black; I cannot see any object.", None
    return "object", f"{_a(s.color).capitalize()} object {_place(s.position, 'image')}.", None


def _count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _respond(text: str, images: list[bytes]) -> tuple[str, str, list[tuple[int, ...]]]:
    """(kind, answer text, image shapes): each image decoded once, for the answer and tokens."""
    rgbs = [decode_jpeg(i) for i in images]
    kind, content, _ = answer_decoded(text, rgbs)
    return kind, content, [r.shape for r in rgbs]


def create_app(models: list[ServedModel], cfg: ReferenceServerConfig, *,
               record_bodies: bool = False) -> FastAPI:
    """The FastAPI app; ``app.state.stats`` holds the counters (and bodies, if recording),
    ``app.state.engines`` each model's batch (``reference.vllm_metrics``)."""
    app = FastAPI(title="refsav reference server", docs_url=None, redoc_url=None)
    stats = ServerStats(bodies=[] if record_bodies else None)
    app.state.stats = stats
    registry = CollectorRegistry()
    exporter = VllmExporter(registry)
    engines = {m.name: Engine(m.name, cfg.kv_capacity, exporter) for m in models}
    app.state.engines = engines
    by_name = {m.name: m for m in models}
    rng = random.Random(cfg.seed)
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict[str, str]:
        stats.requests["health"] += 1
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        stats.requests["models"] += 1
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": created, "owned_by": OWNER,
             "root": m.name, "parent": None} for m in models]}

    @app.get("/metrics")
    async def metrics() -> Response:  # vLLM's names and labels, at the root as in vLLM
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return stats.as_dict()

    @app.post("/stats/reset")
    async def reset_stats() -> dict[str, Any]:
        stats.reset()
        return stats.as_dict()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse:
        stats.requests["chat_completions"] += 1
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        if stats.bodies is not None:
            stats.bodies.append(body)
        name = body.get("model")
        if name not in by_name:
            return _error(404, f"The model `{name}` does not exist.", "NotFoundError")
        stats.models[name] += 1
        served = by_name[name]
        mm_kwargs = body.get("mm_processor_kwargs") or {}
        if mm_kwargs and not served.trust_mm_kwargs:
            return _error(400, MM_KWARGS_REFUSED)
        try:
            text, images = _split_content(body.get("messages") or [])
        except ValueError as e:
            return _error(400, str(e))
        limit = served.image_limit
        if images and limit is not None and len(images) > limit:
            return _error(400, f"At most {limit} image(s) may be provided in one prompt.")
        if text.count(IMAGE_PLACEHOLDER) > len(images):
            return _error(400, f"Found more '{IMAGE_PLACEHOLDER}' placeholders in input prompt "
                               "than actual multimodal data items.")
        max_out = body.get("max_completion_tokens", body.get("max_tokens"))
        if served.max_model_len and isinstance(max_out, int) and max_out > served.max_model_len:
            param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            return _error(400, f"{param}={max_out} cannot be greater than max_model_len="
                               f"{served.max_model_len}. Please request fewer output tokens.")
        wants_json = (body.get("response_format") or {}).get("type") in ("json_schema",
                                                                           "json_object")
        async with engines[name].batch_slot():  # the latency is the request's time in a batch
            if cfg.latency_s:
                await asyncio.sleep(cfg.latency_s)

        fault = None
        if cfg.fault_rate and rng.random() < cfg.fault_rate:
            choices = [f for f in cfg.faults if f != "malformed_json" or wants_json]
            fault = rng.choice(choices) if choices else None
        if fault == "http_500":
            stats.faults["http_500"] += 1
            return _error(500, "injected fault", "InternalServerError")
        if fault == "hang":
            stats.faults["hang"] += 1
            deadline = time.monotonic() + cfg.hang_s
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    return _error(499, "client went away", "ClientClosedRequest")
                await asyncio.sleep(0.05)
            return _error(503, "injected hang ended", "ServiceUnavailable")

        try:  # small images: a thread hop costs more than the pixel work it would offload
            if sum(len(i) for i in images) <= INLINE_IMAGE_BYTES:
                kind, content, shapes = _respond(text, images)
            else:
                kind, content, shapes = await asyncio.to_thread(_respond, text, images)
        except ValueError as e:
            return _error(400, str(e))
        max_patches = int(mm_kwargs.get("max_dynamic_patch", served.max_dynamic_patch))
        prompt_tokens = _count_tokens(text) + sum(image_tokens(s[1], s[0], max_patches)
                                                  for s in shapes)
        if served.max_model_len and prompt_tokens > served.max_model_len:
            return _error(400, f"This model's maximum context length is {served.max_model_len} "
                               f"tokens. However, your prompt contains {prompt_tokens} input "
                               "tokens, which exceeds this limit even without any output "
                               "tokens. Please reduce the length of the input prompt.")
        stats.kinds[kind] += 1
        finish_reason = "stop"
        if fault == "malformed_json":
            stats.faults["malformed_json"] += 1
            content = content[: max(1, len(content) // 2)]
        else:
            bad = draw(cfg.seed, cfg.bad_answer_rate, cfg.bad_answers, kind, text,
                       body.get("seed"), images)
            if bad is not None:
                stats.faults[f"bad:{bad}"] += 1
                content, finish_reason = (bad_verdict(bad, json.loads(content))
                                          if kind == "judge" else bad_text(bad, kind, content))
        completion_tokens = _count_tokens(content or "")
        engines[name].tokens(prompt_tokens, completion_tokens)
        return JSONResponse({  # as is: FastAPI's jsonable_encoder pass is wasted on plain JSON
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    return app


def _uvicorn_config(app: FastAPI) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", lifespan="off",
                          timeout_graceful_shutdown=1, access_log=False)


def run_server(models: ModelsConfig, cfg: ReferenceServerConfig) -> None:
    """Serve in the foreground until interrupted (``refsav serve reference``)."""
    app = create_app(served_models(models, cfg), cfg)
    config = _uvicorn_config(app)
    config.host, config.port = cfg.host, cfg.port
    uvicorn.Server(config).run()


class ReferenceServer:
    """The server on a background thread, for tests and benchmarks (real HTTP on loopback)."""

    def __init__(self, models: ModelsConfig, cfg: ReferenceServerConfig | None = None, *,
                 record_bodies: bool = False) -> None:
        self.cfg = cfg or ReferenceServerConfig(port=0)
        self.app = create_app(served_models(models, self.cfg), self.cfg,
                              record_bodies=record_bodies)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.cfg.host, self.cfg.port))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/v1"

    @property
    def stats(self) -> ServerStats:
        return self.app.state.stats

    def start(self) -> ReferenceServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("reference server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ReferenceServer", "ServedModel", "answer", "answer_decoded", "create_app", "run_server",
           "served_models"]
