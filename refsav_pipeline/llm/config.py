"""Config sections of the model layer (models and how they are served, the HTTP client).

Kept free of ``refsav_pipeline.config`` imports: that module imports these classes to build
``PipelineConfig``. What changes answers (model ids, prompt versions, sampling, processor
kwargs) stays in the run fingerprint; where servers live and how hard we push them does not.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from refsav_pipeline.serve.capacity import MAX_DEFAULT_CONCURRENCY, default_concurrency


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingParams(_Section):
    """Sampling sent with every request; greedy by default so answers are reproducible."""

    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_completion_tokens: int = Field(
        512, ge=1, validation_alias=AliasChoices("max_completion_tokens", "max_tokens"),
        description="vLLM's chat API name; `max_tokens` (deprecated there) is read as this")
    seed: int | None = 0
    repetition_penalty: float | None = None

    def as_body(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class VllmServeConfig(_Section):
    """How ``refsav serve vllm`` starts ``vllm serve`` for one model (never read by the client)."""

    model_path: str | None = Field(None, description="local weights dir; default: the HF id")
    tensor_parallel_size: int = Field(8, ge=1)
    max_model_len: int = Field(
        8192, ge=256, description="at most the checkpoint's context (InternVL2-76B, Qwen2: 8K "
        "trained); the client refuses requests that would not fit")
    limit_mm_per_prompt: dict[str, int] = Field(default_factory=lambda: {"image": 8})
    mm_processor_kwargs: dict[str, Any] | None = Field(
        None, description="server-side default processor kwargs (bounds profiling memory)")
    trust_remote_code: bool = True
    trust_request_mm_kwargs: bool | None = Field(
        None, description="pass --trust-request-mm-kwargs; None: iff this model's requests "
        "carry mm_processor_kwargs (vLLM refuses them otherwise)")
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        "string", description="'string' keeps our `Image-N: <image>` text as written")
    dtype: str = "auto"
    gpu_memory_utilization: float = Field(0.90, gt=0.0, le=1.0)
    gpu_memory_gib: float = Field(80.0, gt=0, description="memory of one GPU (sizing only)")
    replicas: int = Field(1, ge=1, description="independent servers of this model")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535, description="replica i listens on port + i")
    gpus: list[int] | None = Field(
        None, description="local mode: CUDA device ids, split tp-wise over the replicas")
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(3600.0, gt=0)


class ModelEndpointConfig(_Section):
    """One model: its identity, where it is served, and how it is asked."""

    model: str = Field(description="HF repo id; the model's identity in fingerprint and cache")
    served_model_name: str | None = Field(
        None, description="name sent as `model` in requests; default: `model`")
    endpoints: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000/v1"],
        description="OpenAI base URLs (ending in /v1) serving this model")
    max_concurrency: int | Literal["auto"] = Field(
        "auto", description="in-flight requests per endpoint. auto: start from what one "
        "replica's KV cache holds at max_model_len each (serve/capacity.py; 16 for unknown "
        "models) and adapt to the endpoint's vLLM metrics (client.concurrency); a number "
        "pins it")
    api_key_env: str | None = Field(
        None, description="name of an env var holding the server's --api-key, if any")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    mm_processor_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="sent per request as vLLM `mm_processor_kwargs`")
    vllm: VllmServeConfig = Field(default_factory=VllmServeConfig)

    @field_validator("endpoints")
    @classmethod
    def _strip(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one endpoint is needed")
        return [u.rstrip("/") for u in v]

    @field_validator("max_concurrency")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("max_concurrency must be at least 1 (or auto)")
        return v

    @property
    def adaptive(self) -> bool:
        return self.max_concurrency == "auto"

    @property
    def start_concurrency(self) -> int:
        """The pinned number, or the KV arithmetic's that ``auto`` starts from."""
        if isinstance(self.max_concurrency, int):
            return self.max_concurrency
        return default_concurrency(self.model, self.vllm)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


class PromptRef(_Section):
    """A prompt file by id and version (``prompts/<id>.v<version>.yaml``)."""

    id: str
    version: int = Field(ge=1)

    def __str__(self) -> str:
        return f"{self.id}@v{self.version}"


class PromptsConfig(_Section):
    """Which prompt version each call uses; versions are in the fingerprint, the dir is not."""

    dir: str | None = Field(None, description="default: the repository's prompts/")
    object_crop: PromptRef = PromptRef(id="object_caption_crop", version=1)
    object_masked: PromptRef = PromptRef(id="object_caption_masked", version=1)
    judge: PromptRef = PromptRef(id="consistency_judge", version=1)
    scene: PromptRef = PromptRef(id="scene_caption", version=1)
    video: PromptRef = PromptRef(id="video_caption", version=1)
    video_contrastive: PromptRef = PromptRef(id="video_caption_contrastive", version=1)


def _captioner() -> ModelEndpointConfig:
    return ModelEndpointConfig(
        model="OpenGVLab/InternVL2-Llama3-76B",
        endpoints=["http://127.0.0.1:8000/v1"],
        sampling=SamplingParams(max_completion_tokens=512),
        mm_processor_kwargs={"max_dynamic_patch": 6},
        vllm=VllmServeConfig(tensor_parallel_size=8, max_model_len=8192,
                             limit_mm_per_prompt={"image": 8},
                             mm_processor_kwargs={"max_dynamic_patch": 6}, port=8000),
    )


def _judge() -> ModelEndpointConfig:
    return ModelEndpointConfig(
        model="Qwen/Qwen2-72B-Instruct",
        endpoints=["http://127.0.0.1:8100/v1"],
        sampling=SamplingParams(max_completion_tokens=384),
        vllm=VllmServeConfig(tensor_parallel_size=4, max_model_len=8192,
                             limit_mm_per_prompt={}, trust_remote_code=False, port=8100),
    )


class ModelsConfig(_Section):
    captioner: ModelEndpointConfig = Field(default_factory=_captioner)
    judge: ModelEndpointConfig = Field(default_factory=_judge)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)


class ConcurrencyConfig(_Section):
    """How ``max_concurrency: auto`` adapts each endpoint's limit (``llm/concurrency.py``)."""

    interval_s: float = Field(1.0, gt=0, description="how often each endpoint's vLLM /metrics "
                              "is read (and the limit reconsidered)")
    kv_target: float = Field(0.95, gt=0, le=1, description="raise the limit only while the KV "
                             "cache's use is below this")
    hold_queue: float = Field(0.1, ge=0, description="a waiting queue up to this fraction of "
                              "the running batch (at least 2 requests) is held, not cut")
    increase: float = Field(0.1, gt=0, description="a raise adds this fraction of the limit "
                            "(at least 1)")
    decrease: float = Field(0.7, gt=0, lt=1, description="a cut on preemptions or timeouts "
                            "multiplies the limit by this")
    max_limit: int = Field(MAX_DEFAULT_CONCURRENCY, ge=1, description="ceiling per endpoint")
    split: int = Field(1, ge=1, description="clients sharing each endpoint's limits: the run "
                       "sets it to run.model_actors, each actor adapting its share")


class ClientConfig(_Section):
    """HTTP behaviour of the client: never changes an answer, only whether/when we get it."""

    connect_timeout_s: float = Field(5.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0, description="whole request, per attempt")
    max_attempts: int = Field(6, ge=1, description="transport attempts before a row fails")
    max_parse_attempts: int = Field(3, ge=1, description="attempts when output is unparseable")
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    health_timeout_s: float = Field(5.0, gt=0)
    reprobe_interval_s: float = Field(30.0, ge=0, description="wait before re-probing a dead one")
    outage_limit_s: float = Field(
        1800.0, gt=0, description="how long requests wait while no endpoint of a model answers "
        "before the run stops (unmarked, to be resumed)")
    failing_after: int = Field(
        3, ge=1, description="consecutive transient errors (429, 5xx, timeouts, broken "
        "connections) of an endpoint's completions after which it counts as down, like one "
        "refusing connections: requests wait without spending attempts until a trial "
        "completion succeeds (docs/failures.md)")
    trial_timeout_s: float = Field(
        60.0, gt=0, description="time limit of the trial completion that decides whether an "
        "endpoint whose completions failed answers again")
    concurrency: ConcurrencyConfig = Field(default_factory=ConcurrencyConfig)
    cache: bool = True
    cache_path: str | None = Field(None, description="a folder; default: <out>/cache")
    cache_local_dir: str | None = Field(
        None, description="node-local folder where each actor writes its cache files before "
        "promoting them to cache_path (resolved on each node, $VARS expanded); default: "
        "<temp dir>/refsav-cache, i.e. $TMPDIR if set. On Slurm/k8s use node-local scratch "
        "(e.g. $TMPDIR, an emptyDir). \"\": write straight to cache_path")
    cache_promote_interval_s: float = Field(
        30.0, gt=0, description="how often a writer copies the new answers of the videos it "
        "is working on to cache_path (a video's are copied as soon as it is done with it); "
        "a lost node loses at most this much of its answers (they are asked again)")


CheckedCall = Literal["object", "judge", "scene", "video"]
"""What an answer is checked as: both object captions are ``object``; the contrastive video
caption is ``video``."""


class AnswerChecksConfig(_Section):
    """What a model's answer must be before it becomes data or enters the request cache
    (``llm/answer_checks.py``, docs/quality.md). Not in the run fingerprint: it decides which
    answers are accepted, not what they say; ``refsav requalify`` re-judges a finished run
    under changed checks without calling the models."""

    attempts: int = Field(
        3, ge=1, description="answers asked per call; each retry changes the request (another "
        "seed, a prompt note saying what was wrong); then the row is `rejected`")
    retry_temperature: float = Field(
        0.5, ge=0, description="temperature of the retries (with their own seed, so still "
        "reproducible): at temperature 0 a model ignores the seed and a retry would only "
        "differ by its prompt note; never lowers the configured temperature")
    max_words: dict[CheckedCall, int] = Field(
        default_factory=lambda: {"object": 150, "judge": 200, "scene": 250, "video": 300},
        description="runaway: more words than this (the prompts ask 2-6 sentences)")
    leak_calls: list[CheckedCall] = Field(
        default_factory=lambda: ["scene", "video"],
        description="calls whose images carry our yellow marks: their answers must not name them")
    min_stopword_fraction: float = Field(
        0.08, ge=0, le=1, description="not_english: English function words among the words of "
        "an answer of at least `language_min_words` words (English prose: 0.3-0.5, a list of "
        "noun phrases ~0.1); fewer, or more French/Spanish/German/… function words than "
        "English ones, is another language")
    language_min_words: int = Field(8, ge=1)
    max_foreign_letter_fraction: float = Field(
        0.02, ge=0, le=1, description="not_english: letters of a non-Latin script (CJK, "
        "Cyrillic, Arabic, …) among all letters")
    max_duplicate_sentence_fraction: float = Field(
        0.3, ge=0, le=1, description="repetition: characters in repeated sentences / all")
    repetition_min_words: int = Field(
        30, ge=1, description="the n-gram rules below apply from this many words on")
    max_top_ngram_fraction: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="repetition: characters in the most frequent n-gram / all (Gopher)")
    max_duplicate_ngram_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="repetition: characters in repeated n-grams / all (Gopher)")
    similarity_threshold: float = Field(
        0.7, ge=0, le=1, description="referring uniqueness: two video captions of one video "
        "whose word-bigram Jaccard similarity is at least this are near-duplicates")
    max_contrast_objects: int = Field(
        5, ge=1, description="the most similar other objects shown to a contrastive re-caption")
    kept_answer_chars: int = Field(
        2000, ge=0, description="of a rejected row's last answer, kept for inspection")
