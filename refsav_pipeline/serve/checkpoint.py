"""A checkpoint's ``config.json``, read offline, and the context length it allows.

``refsav serve vllm`` checks ``max_model_len`` against it before starting anything, because
vLLM only finds out after loading (and then refuses to start). Only files already on disk are
read: a local weights directory, or a snapshot in the Hugging Face cache; nothing is
downloaded, and an unreadable checkpoint is simply not checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "max_sequence_length", "max_seq_length", "seq_len")
"""Keys under which configs state the trained context (the ones vLLM derives its limit from)."""
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")
"""Where multimodal configs (InternVL: ``llm_config``) keep their language model's config."""

PRESCALED_ROPE = ("default", "su", "longrope", "llama3", "yarn", "deepseek_yarn",
                  "deepseek_llama_scaling")
"""RoPE types whose stated context already includes the extension (no factor applied)."""


def hf_hub_cache() -> Path:
    """The cache folder as Hugging Face resolves it, read when called (``huggingface_hub``
    reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "huggingface")
    return Path(home) / "hub"


def find_config_json(model: str) -> Path | None:
    """``config.json`` of a local directory, or of a cached snapshot of HF id ``model``: the
    one ``refs/main`` names, else any snapshot that has it (a download by revision)."""
    local = Path(model).expanduser()
    if local.is_dir():
        p = local / "config.json"
        return p if p.is_file() else None
    if model.count("/") != 1:
        return None
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.errors import CacheNotFound

    cache = hf_hub_cache()
    found = try_to_load_from_cache(model, "config.json", cache_dir=cache)
    if isinstance(found, str):
        return Path(found)
    try:
        repos = scan_cache_dir(cache).repos
    except (CacheNotFound, OSError):
        return None
    for repo in repos:
        if repo.repo_id == model and repo.repo_type == "model":
            for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
                for f in rev.files:
                    if f.file_name == "config.json":
                        return f.file_path
    return None


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    for key in TEXT_CONFIG_KEYS:
        sub = cfg.get(key)
        if isinstance(sub, dict):
            return sub
    return cfg


def context_length(cfg: dict[str, Any]) -> int | None:
    """The language model's trained context, scaled by a RoPE extension if one is declared."""
    tc = text_config(cfg)
    found = [int(v) for k in CONTEXT_KEYS for v in [tc.get(k)] if isinstance(v, int | float)]
    if not found:
        return None
    n = min(found)
    rope = tc.get("rope_scaling") or tc.get("rope_parameters") or {}
    if isinstance(rope, dict) and rope.get("factor"):
        kind = rope.get("rope_type") or rope.get("type")
        if kind not in PRESCALED_ROPE:
            n = int(n * float(rope["factor"]))
    return n


def max_model_len_problem(model: str, max_model_len: int) -> str | None:
    """Why ``max_model_len`` cannot be served for ``model`` (None: fits, or not readable here)."""
    path = find_config_json(model)
    if path is None:
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ctx = context_length(cfg) if isinstance(cfg, dict) else None
    if ctx is None or max_model_len <= ctx:
        return None
    return (f"{model}: max_model_len {max_model_len} is longer than the checkpoint's context "
            f"{ctx} (from {path}); vLLM would refuse to start. Set vllm.max_model_len <= {ctx}.")
