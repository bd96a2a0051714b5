"""Fixtures of the contract tier: vLLM's own parser and engine config, stand-in checkpoints.

Runs only in the contract venv (scripts/contract), with this clone on PYTHONPATH. Anything
missing (vLLM, the captured request bodies) is a failure with its reason, never a skip.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
CAPTURE = ROOT / "build" / "contract" / "requests.json"
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
STANDIN = {"OpenGVLab/InternVL2-Llama3-76B": "InternVL2-Llama3-76B",
           "Qwen/Qwen2-72B-Instruct": "Qwen2-72B-Instruct"}
"""HF id → stand-in checkpoint dir (config.json as published, no weights)."""


def pytest_configure(config: pytest.Config) -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as e:  # never skip: the tier is broken if vLLM is not importable
        raise pytest.UsageError(f"the contract tier needs vLLM importable: {e}") from e
    if os.environ.get("VLLM_TARGET_DEVICE") != "cpu":
        raise pytest.UsageError("run the contract tier with VLLM_TARGET_DEVICE=cpu "
                                "(scripts/contract sets it)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A skipped contract test is a failed one: this tier passes only by running."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"skipped, which this tier does not allow: {rep.longrepr}"


def _standin_tokenizer(dest: Path) -> None:
    """A byte-level tokenizer with InternVL's image tokens: vLLM's processor needs one.

    Every byte is one token (no merges), so ``<image>`` is matched in prompts as a token
    sequence, as with the real BPE tokenizer; ``<img>``, ``</img>`` and ``<IMG_CONTEXT>`` are
    single special tokens, as in the checkpoint.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>",
                                                           "<|im_start|>"]})
    fast.save_pretrained(dest)


@pytest.fixture(scope="session")
def standins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """HF id → a copy of its stand-in checkpoint (the captioner's with a stand-in tokenizer)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for hf_id, name in STANDIN.items():
        dest = root / name
        shutil.copytree(CHECKPOINTS / name, dest)
        if name.startswith("InternVL2"):
            _standin_tokenizer(dest)
        out[hf_id] = dest
    return out


def dry_run(config: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    """``refsav serve vllm --dry-run`` from this clone, run by this venv's Python."""
    e = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    e.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "refsav_pipeline.serve.cli", "vllm", "--config",
                           str(config), "--dry-run", *args], capture_output=True, text=True,
                          env=e, timeout=300, cwd=ROOT)


def commands(output: str) -> list[tuple[dict[str, str], list[str]]]:
    """(env assignments, argv) of each printed command line."""
    out = []
    for line in output.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = shlex.split(line)
        env = {}
        while words and "=" in words[0] and not words[0].startswith("-"):
            k, v = words.pop(0).split("=", 1)
            env[k] = v
        out.append((env, words))
    return out


@pytest.fixture(scope="session")
def serve_parser() -> Callable[[list[str]], Any]:
    """vLLM's own ``vllm serve`` parser, with the checks ``vllm serve`` runs before loading."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    sub = parser.add_subparsers(dest="subparser")
    cmd = ServeSubcommand()
    cmd.subparser_init(sub)

    def parse(argv: list[str]) -> Any:
        assert argv[:2] == ["vllm", "serve"], argv
        args = parser.parse_args(argv[1:])
        cmd.validate(args)
        return args

    return parse


@pytest.fixture(scope="session")
def engine_config(standins: dict[str, Path]) -> Callable[[Any], Any]:
    """vLLM's ``create_engine_config()`` for parsed serve args, the model swapped for its
    stand-in checkpoint; cached by the arguments that matter (not host/port)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    cache: dict[str, Any] = {}

    def build(args: Any) -> Any:
        ns = dict(vars(args))
        ns["model_tag"] = str(standins[args.model_tag])
        key = json.dumps({k: v for k, v in ns.items() if k not in ("port", "host")},
                         sort_keys=True, default=str)
        if key not in cache:
            import argparse

            a = argparse.Namespace(**ns)
            a.model = a.model_tag
            cache[key] = AsyncEngineArgs.from_cli_args(a).create_engine_config()
        return cache[key]

    return build


@pytest.fixture(scope="session")
def captured() -> dict[str, dict]:
    """The five request bodies the core tier captured from a real run of the shipped config."""
    if not CAPTURE.is_file():
        pytest.fail(f"{CAPTURE} is missing: run the core tier first (scripts/test does; "
                    "tests/test_llm_vllm_contract.py writes it)")
    return json.loads(CAPTURE.read_text())["requests"]
