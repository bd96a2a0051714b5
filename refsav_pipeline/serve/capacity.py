"""How many requests one vLLM replica can hold at once, from its memory: the default concurrency.

vLLM batches continuously, so a replica is only busy when enough requests are in flight. What
bounds that number is the KV cache: per token, every layer stores a key and a value vector per
KV head. A replica's KV room is its GPUs' usable memory (``gpu_memory_utilization``) minus the
weights and a working reserve (activations, CUDA graphs, communication buffers, the vision
encoder). The default ``max_concurrency`` is the number of requests that fit in that room even
if every one of them grows to ``max_model_len``: the batch stays full and vLLM never has to
preempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

GIB = 1 << 30
KIB = 1 << 10
WORKING_GIB_PER_GPU = 6.0
"""Reserve per GPU outside weights and KV cache (activations, CUDA graphs, NCCL, ViT)."""
MAX_DEFAULT_CONCURRENCY = 1024
"""vLLM's own default ``max_num_seqs`` on 80 GB GPUs: more in flight would only queue there."""


@dataclass(frozen=True)
class ModelShape:
    """What sizes a model's memory: its language model's attention shape and all weights."""

    layers: int
    kv_heads: int
    head_dim: int
    params_b: float  # billions, vision tower included
    dtype_bytes: int = 2  # bf16

    @property
    def kv_bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes  # K and V

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.dtype_bytes


class ServedShape(Protocol):
    """What sizes a replica (``llm.config.VllmServeConfig`` has it): taken as a protocol so the
    config can derive its default from this module without the two importing each other."""

    tensor_parallel_size: int
    gpu_memory_gib: float
    gpu_memory_utilization: float
    max_model_len: int


KNOWN_SHAPES: dict[str, ModelShape] = {
    # Llama-3-70B language model (80 layers, 64 query / 8 KV heads of 128) + InternViT-6B.
    "OpenGVLab/InternVL2-Llama3-76B": ModelShape(80, 8, 128, 76.3),
    # Qwen2-72B: 80 layers, 64 query / 8 KV heads of 128.
    "Qwen/Qwen2-72B-Instruct": ModelShape(80, 8, 128, 72.7),
}
DEFAULT_CONCURRENCY = 16
"""For models whose shape we do not know: a modest number that any server accepts."""


@dataclass(frozen=True)
class ReplicaCapacity:
    """The arithmetic for one replica, kept so it can be printed."""

    model: str
    shape: ModelShape
    gpus: int
    gpu_gib: float
    utilization: float
    max_model_len: int

    @property
    def usable_gib(self) -> float:
        return self.gpus * self.gpu_gib * self.utilization

    @property
    def weights_gib(self) -> float:
        return self.shape.weight_bytes / GIB

    @property
    def working_gib(self) -> float:
        return self.gpus * WORKING_GIB_PER_GPU

    @property
    def kv_gib(self) -> float:
        return max(0.0, self.usable_gib - self.weights_gib - self.working_gib)

    @property
    def kv_tokens(self) -> int:
        return int(self.kv_gib * GIB // self.shape.kv_bytes_per_token)

    @property
    def concurrency(self) -> int:
        """Requests that fit even at ``max_model_len`` each (at least 1)."""
        return max(1, min(MAX_DEFAULT_CONCURRENCY, self.kv_tokens // self.max_model_len))

    def explain(self) -> str:
        s = self.shape
        return (f"{self.model}: {self.gpus}×{self.gpu_gib:g} GiB × {self.utilization:g} = "
                f"{self.usable_gib:.0f} GiB − weights {self.weights_gib:.0f} GiB "
                f"({s.params_b:g}B × {s.dtype_bytes} B) − working {self.working_gib:.0f} GiB "
                f"= KV {self.kv_gib:.0f} GiB; KV per token {s.layers} layers × {s.kv_heads} "
                f"heads × {s.head_dim} × 2 × {s.dtype_bytes} B = "
                f"{s.kv_bytes_per_token // KIB} KiB → {self.kv_tokens:,} tokens; "
                f"÷ max_model_len {self.max_model_len} = {self.concurrency} requests in flight")


def replica_capacity(model: str, v: ServedShape) -> ReplicaCapacity | None:
    """The KV arithmetic for one replica of ``model`` served with ``v``; None if shape unknown."""
    shape = KNOWN_SHAPES.get(model)
    if shape is None:
        return None
    return ReplicaCapacity(model, shape, v.tensor_parallel_size, v.gpu_memory_gib,
                           v.gpu_memory_utilization, v.max_model_len)


def default_concurrency(model: str, v: ServedShape) -> int:
    """Default in-flight requests per endpoint of ``model``: what its KV cache holds."""
    cap = replica_capacity(model, v)
    return cap.concurrency if cap is not None else DEFAULT_CONCURRENCY
