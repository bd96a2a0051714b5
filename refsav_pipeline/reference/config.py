"""Config section of the offline reference server (``reference_server`` in the run config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


FaultKind = Literal["http_500", "hang", "malformed_json"]
BadAnswerKind = Literal["null", "empty", "truncated", "refusal", "runaway", "repetition",
                        "prompt_leak", "not_english", "same_video_caption"]
BAD_ANSWER_KINDS: tuple[BadAnswerKind, ...] = (
    "null", "empty", "truncated", "refusal", "runaway", "repetition", "prompt_leak",
    "not_english", "same_video_caption")


class ReferenceServerConfig(_Section):
    """The offline reference server (``refsav serve reference``)."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    latency_s: float = Field(0.0, ge=0, description="added to every chat completion")
    fault_rate: float = Field(0.0, ge=0, le=1)
    faults: list[FaultKind] = Field(
        default_factory=lambda: ["http_500", "hang", "malformed_json"],
        description="malformed_json applies to judge requests only")
    hang_s: float = Field(300.0, ge=0, description="how long a 'hang' fault holds a request")
    bad_answer_rate: float = Field(
        0.0, ge=0, le=1, description="share of answers that are bad on purpose (HTTP 200): "
        "reference/bad_answers.py; drawn from `seed` and the request, so deterministic")
    bad_answers: list[BadAnswerKind] = Field(
        default_factory=lambda: list(BAD_ANSWER_KINDS),
        description="the kinds drawn from; prompt_leak only on scene/video requests, "
        "same_video_caption only on video requests")
    seed: int = 0
    kv_capacity: int | None = Field(
        None, ge=1, description="behave like a continuous-batching engine: at most this many "
        "requests of each model run at once (for latency_s), the rest wait in a queue; "
        "KV use = running / kv_capacity (GET /metrics). None: no limit")
    trust_request_mm_kwargs: bool | None = Field(
        None, description="accept per-request mm_processor_kwargs (vLLM's trust option); "
        "None: as `refsav serve vllm` starts each model")
