"""Pipeline configuration: one pydantic model, loaded from YAML, fingerprinted for resume safety.

Each section belongs to one part of the pipeline; the fingerprint covers every field that can
change an output row, so a resumed run refuses to mix rows made under different settings.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from refsav_pipeline.llm.config import AnswerChecksConfig, ClientConfig, ModelsConfig
from refsav_pipeline.reference.config import ReferenceServerConfig

MaskletType = Literal["manual", "auto"]
RGB = tuple[int, int, int]
YELLOW: RGB = (255, 255, 0)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SelectionConfig(_Section):
    """Which masklets become Ref-SAV objects."""

    masklet_types: list[MaskletType] = ["manual", "auto"]
    min_visible_frames: int = Field(1, ge=1, description="annotated frames with a non-empty mask")
    min_area: int = Field(1, ge=0, description="pixels at the max-area frame")


class FramesConfig(_Section):
    num_sampled: int = Field(8, ge=1, description="frames for the video-level caption")


class RenderConfig(_Section):
    crop_margin: int = Field(8, ge=0, description="pixels around the bbox of the object crop")
    contour_color: RGB = YELLOW
    contour_thickness: int = Field(3, ge=1)
    box_color: RGB = YELLOW
    box_thickness: int = Field(3, ge=1)
    box_style: Literal["rectangle", "corners"] = "rectangle"
    box_margin: int = Field(4, ge=0)
    jpeg_quality: int = Field(90, ge=10, le=100)
    max_side: int = Field(1024, ge=32, description="longest image side sent to a model")


class DecodeConfig(_Section):
    backend: Literal["pyav", "opencv"] = "pyav"
    threads: int = Field(1, ge=0, description="decoder threads per video (0: FFmpeg decides); "
                         "1 fits Ray's one CPU per CPU-stage task")
    check_frame_count: bool = True


class RunConfig(_Section):
    """How a run is spread over Ray: none of it changes a row, so none of it is fingerprinted."""

    shard_size: int = Field(16, ge=1, description="whole videos per shard (fixed by the plan)")
    cpu_workers: int = Field(0, ge=0, description="CPU-stage tasks at once; 0: the cluster's CPUs")
    cpus_per_task: float = Field(1.0, gt=0, description="Ray num_cpus of one CPU-stage task")
    model_actors: int = Field(1, ge=1, description="async actors making the model calls")
    max_inflight_masklets: int = Field(64, ge=1, description="masklets in the model stage at once")
    max_prepared_videos: int = Field(
        8, ge=1, description="videos rendered but not yet captioned (the queue between stages)")
    object_store_memory_mb: int = Field(1024, ge=128, description="local Ray instance only")
    video_timeout_s: float = Field(
        600.0, gt=0, description="time limit of the CPU stage for one video (read, decode, "
        "render); a video over it (a hung network mount) fails its rows as video_timeout and "
        "the shard goes on")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="serve Prometheus metrics at http://<driver host>:"
        "PORT/metrics while the run goes (docs/metrics.md); None: off")
    metrics_host: str = Field("0.0.0.0", description="address the metrics server binds")


class ExportConfig(_Section):
    """How a run becomes Sa2VA's files (``refsav export sa2va``); never changes a row.

    ``long_expression`` picks the caption that becomes Sa2VA's long expression (``formated`` in
    Ref-SAV.json, type 0 in the benchmark): the video-level caption is the published recipe's
    final stage; ``scene+video`` joins the two with a space.
    """

    long_expression: Literal["video", "scene", "object", "scene+video"] = "video"
    jpeg_quality: int = Field(95, ge=10, le=100, description="benchmark frame JPEGs")
    frame_count_workers: int = Field(
        0, ge=0, description="threads counting training videos' frames with cv2; 0: one per CPU")


def load_yaml(path: str | Path) -> dict:
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return data


class PipelineConfig(BaseModel):
    """Root config. Sections are added by the parts of the pipeline that own them."""

    model_config = ConfigDict(extra="forbid")

    selection: SelectionConfig = SelectionConfig()
    frames: FramesConfig = FramesConfig()
    render: RenderConfig = RenderConfig()
    decode: DecodeConfig = DecodeConfig()
    run: RunConfig = RunConfig()
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    checks: AnswerChecksConfig = Field(default_factory=AnswerChecksConfig)
    reference_server: ReferenceServerConfig = Field(default_factory=ReferenceServerConfig)
    export: ExportConfig = ExportConfig()

    @classmethod
    def load(cls, path: str | Path | None) -> PipelineConfig:
        """The config at ``path`` (defaults if None). A mistake raises ``ValueError`` with one
        short clause per problem (``ConfigError``), a typo'd key with its likely meaning."""
        if path is None:
            return cls()
        try:
            return cls.model_validate(load_yaml(path))
        except ValidationError as exc:
            raise ConfigError(describe_errors(cls, exc)) from None

    def row_settings(self) -> dict:
        """Everything that shapes output rows (not where servers live, nor how hard they are
        pushed): what the fingerprint hashes, and what a published dataset shows."""
        return self.model_dump(mode="json", exclude=_FINGERPRINT_EXCLUDE)

    def fingerprint(self) -> str:
        """Hash of ``row_settings``."""
        blob = json.dumps(self.row_settings(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """A config file that does not validate, said in words (no pydantic dump, no URL)."""


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (list indices, dict keys and
    unions are looked through)."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            return None
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is not None:  # else a list index or a dict key: the same items' model
            model = _submodel(field.annotation)
    return model


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def describe_errors(root: type[BaseModel], exc: ValidationError) -> str:
    """One clause per error: where, what, and for an unknown key the closest known ones."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = ".".join(str(x) for x in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, loc)
            known = sorted(owner.model_fields) if owner is not None else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=2, cutoff=0.6)
            hint = (f"did you mean {' or '.join(f'`{c}`' for c in close)}?" if close
                    else f"known keys here: {', '.join(known)}" if known else "")
            parts.append(f"unknown key `{where}`" + (f" ({hint})" if hint else ""))
        elif err["type"] == "missing":
            parts.append(f"`{where}` is required")
        else:
            parts.append(f"`{where}`: {err['msg']} (got {err.get('input')!r:.60})")
    return "; ".join(parts)


# Sections/fields that may change between a run and its resume without changing rows
# (e.g. endpoint addresses, concurrency). Owners of later sections extend this.
_FINGERPRINT_EXCLUDE: dict = {"run": True}

# Model layer: where servers live, how they are launched and how hard we push them never
# changes an answer; model ids, prompt versions, sampling and processor kwargs do and stay in.
_SERVING_FIELDS = {"endpoints": True, "max_concurrency": True, "api_key_env": True, "vllm": True}
_FINGERPRINT_EXCLUDE.update({
    "models": {"captioner": _SERVING_FIELDS, "judge": _SERVING_FIELDS, "prompts": {"dir": True}},
    "client": True,
    "reference_server": True,
})

# Answer checks decide which answers are accepted, not what they say; `refsav requalify`
# re-judges a run's rows under changed checks (docs/quality.md).
_FINGERPRINT_EXCLUDE["checks"] = True

# Export settings shape the exported files, never a row.
_FINGERPRINT_EXCLUDE["export"] = True

# Decoder threads change speed, never pixels.
_FINGERPRINT_EXCLUDE["decode"] = {"threads": True}
