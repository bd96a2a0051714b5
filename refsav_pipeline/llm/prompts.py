"""Versioned prompt files (``prompts/<id>.v<version>.yaml``) and their rendering.

A prompt's id and version go into every output row and into the request-cache key, so a
changed wording is a new version, never an in-place edit. The file's digest goes into the
cache key too, so an accidental in-place edit cannot be served from stale cache entries.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from refsav_pipeline.llm.config import PromptRef

IMAGE_PLACEHOLDER = "<image>"
DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


class ImageCount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int = Field(0, ge=0)
    max: int = Field(0, ge=0)


class PromptTemplate(BaseModel):
    """One prompt file. ``user`` is a ``string.Template``: ``${images}``, ``${num_images}``
    and the names listed in ``inputs``; ``$`` rather than ``{}`` so JSON examples need no
    escaping."""

    model_config = ConfigDict(extra="forbid")

    id: str
    version: int = Field(ge=1)
    model: Literal["captioner", "judge"]
    description: str = ""
    images: ImageCount = ImageCount()
    inputs: list[str] = Field(default_factory=list)
    system: str | None = None
    user: str
    sampling: dict[str, Any] = Field(default_factory=dict, description="overrides")
    mm_processor_kwargs: dict[str, Any] = Field(default_factory=dict, description="overrides")
    digest: str = Field("", description="sha256 of the file, filled by the loader")

    @field_validator("sampling")
    @classmethod
    def _completion_name(cls, v: dict[str, Any]) -> dict[str, Any]:
        """``max_tokens`` is deprecated in vLLM's chat API: send ``max_completion_tokens``."""
        if "max_tokens" not in v:
            return v
        out = {k: val for k, val in v.items() if k != "max_tokens"}
        out.setdefault("max_completion_tokens", v["max_tokens"])
        return out

    @property
    def ref(self) -> str:
        return f"{self.id}@v{self.version}"

    def render(self, num_images: int, **inputs: str) -> tuple[str | None, str]:
        """(system, user text) with InternVL-style image placeholders.

        Several images are numbered ``Image-1: <image>`` … so the text can refer to them and
        vLLM uses our placeholders instead of prepending its own.
        """
        if not self.images.min <= num_images <= self.images.max:
            raise ValueError(f"prompt {self.ref} takes {self.images.min}..{self.images.max} "
                             f"images, got {num_images}")
        missing = set(self.inputs) - set(inputs)
        extra = set(inputs) - set(self.inputs)
        if missing or extra:
            raise ValueError(f"prompt {self.ref}: missing inputs {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        user = string.Template(self.user).substitute(
            images=image_placeholders(num_images), num_images=str(num_images), **inputs)
        return self.system, user.strip()


def image_placeholders(n: int) -> str:
    if n == 0:
        return ""
    if n == 1:
        return IMAGE_PLACEHOLDER
    return "\n".join(f"Image-{i}: {IMAGE_PLACEHOLDER}" for i in range(1, n + 1))


def prompt_path(ref: PromptRef, prompts_dir: str | Path | None = None) -> Path:
    return Path(prompts_dir or DEFAULT_PROMPTS_DIR) / f"{ref.id}.v{ref.version}.yaml"


def load_prompt(ref: PromptRef, prompts_dir: str | Path | None = None) -> PromptTemplate:
    """Load and check one prompt file: its id/version must match the file name it was asked by."""
    path = prompt_path(ref, prompts_dir)
    raw = path.read_bytes()
    data = yaml.safe_load(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    tpl = PromptTemplate.model_validate({**data, "digest": hashlib.sha256(raw).hexdigest()})
    if (tpl.id, tpl.version) != (ref.id, ref.version):
        raise ValueError(f"{path}: declares {tpl.ref}, expected {ref}")
    # Fail at load time, not at the first call, on a template naming an unknown variable.
    try:
        tpl.render(tpl.images.min, **{k: "x" for k in tpl.inputs})
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: template does not render: {e!r}") from e
    return tpl
