"""What a model call returns: text plus everything a row needs to explain where it came from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CallResult(BaseModel):
    """One answered call. ``usage`` is the tokens of the call that produced the text (also on a
    cache hit, where nothing was paid now: see ``cached``). ``latency_s`` is the successful
    HTTP attempt; ``attempts`` counts tries. Neither is deterministic — keep them out of rows
    that must be byte-identical across runs."""

    model_config = ConfigDict(frozen=True)

    text: str
    model: str = Field(description="HF model id")
    prompt_id: str
    prompt_version: int
    usage: Usage = Usage()
    latency_s: float = 0.0
    attempts: int = 1
    cached: bool = False
    check_failures: list[str] = Field(
        default_factory=list, description="defect kinds of the answers rejected before this "
        "one (llm.answer_checks), in order; empty if the first answer was usable")

    @property
    def prompt_ref(self) -> str:
        return f"{self.prompt_id}@v{self.prompt_version}"


class ObjectDescriptions(BaseModel):
    """The two object-level captions: from the crop and from the masked full frame."""

    model_config = ConfigDict(frozen=True)

    crop: CallResult
    masked: CallResult


class JudgeVerdict(BaseModel):
    """The judge's structured answer; its JSON schema is sent as ``response_format``."""

    model_config = ConfigDict(extra="forbid")

    consistent: bool
    reason: str
    description: str


class JudgeResult(CallResult):
    consistent: bool
    reason: str
    description: str
