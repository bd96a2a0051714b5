"""Our launcher's commands and our request bodies, checked by vLLM's own code (pinned version).

What the reference server cannot show: whether ``vllm serve`` accepts our flags and config,
whether the engine config can be built for the published checkpoints at our context length,
and whether vLLM accepts every request the pipeline sends, exactly as sent.
"""

from __future__ import annotations

import base64
import importlib.metadata
import io
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CONFIGS, ROOT, STANDIN, commands, dry_run
from PIL import Image

from refsav_pipeline.llm.budget import IMAGE_WRAP_TOKENS, image_tokens

NODE = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(8)))}
"""One 8-GPU node, as `refsav serve vllm` sees it without --address."""


def _all_commands(config: Path) -> list[tuple[str, dict[str, str], list[str]]]:
    """(mode, env, argv) of every command the dry run prints: local per role, and Ray."""
    out = []
    for mode, args, env in [("local", ["--only", "captioner"], NODE),
                            ("local", ["--only", "judge"], NODE),
                            ("ray", ["--address", "auto"], None)]:
        res = dry_run(config, *args, env=env)
        assert res.returncode == 0, res.stderr
        out += [(mode, e, argv) for e, argv in commands(res.stdout)]
    return out


@pytest.fixture(scope="module")
def shipped() -> dict[str, list[tuple[str, dict[str, str], list[str]]]]:
    return {c.name: _all_commands(c) for c in CONFIGS}


def test_tested_vllm_version_is_the_extra_range() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["vllm"]
    pin = next(r for r in extra if r.startswith("vllm"))
    assert pin == f"vllm=={importlib.metadata.version('vllm')}", pin


def test_every_dry_run_command_parses_with_vllm_serve(
        shipped: dict, serve_parser: Callable[[list[str]], Any]) -> None:
    seen = 0
    for name, cmds in shipped.items():
        assert {m for m, _, _ in cmds} == {"local", "ray"}, name
        for _mode, _env, argv in cmds:
            args = serve_parser(argv)
            assert args.model_tag in STANDIN, argv
            assert args.chat_template_content_format == "string", argv
            seen += 1
    assert seen >= 2 * len(CONFIGS) * 2


def test_local_commands_fit_one_8_gpu_node() -> None:
    for config in CONFIGS:
        for role_args in (["--only", "captioner"], ["--only", "judge"], []):
            res = dry_run(config, *role_args, env=NODE)
            if res.returncode != 0:  # both roles need two nodes: refused, with the way out
                assert role_args == [] and "--only captioner" in res.stderr, res.stderr
                continue
            used: list[int] = []
            for env, _argv in commands(res.stdout):
                ids = [int(g) for g in env["CUDA_VISIBLE_DEVICES"].split(",")]
                assert all(0 <= g < 8 for g in ids), (config.name, env)
                used += ids
            assert len(used) == len(set(used)), (config.name, used)


def test_engine_config_builds_for_the_published_checkpoints(
        shipped: dict, serve_parser: Callable, engine_config: Callable) -> None:
    for cmds in shipped.values():
        for _mode, _env, argv in cmds:
            args = serve_parser(argv)
            cfg = engine_config(args)
            mc = cfg.model_config
            assert mc.max_model_len == args.max_model_len
            assert cfg.parallel_config.tensor_parallel_size == args.tensor_parallel_size
            if args.model_tag.startswith("OpenGVLab/"):
                assert mc.multimodal_config is not None
                assert mc.multimodal_config.get_limit_per_prompt("image") == 8
                assert mc.hf_config.vision_config.num_attention_heads == 25


def _launch_args(shipped: dict, serve_parser: Callable, served_name: str) -> Any:
    """The parsed flags `refsav serve vllm` starts the model serving ``served_name`` with."""
    for _mode, _env, argv in shipped["refsav-internvl2-76b-qwen2-72b.yaml"]:
        args = serve_parser(argv)
        if served_name in (args.served_model_name or []):
            return args
    raise AssertionError(f"no command serves {served_name}")


def _images(body: dict) -> list[tuple[int, int]]:
    sizes = []
    for m in body["messages"]:
        for p in m["content"] if isinstance(m["content"], list) else []:
            if p.get("type") == "image_url":
                b64 = re.sub(r"^data:image/[a-z]+;base64,", "", p["image_url"]["url"])
                with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
                    sizes.append(im.size)
    return sizes


def test_captured_requests_pass_vllms_request_checks(
        captured: dict, shipped: dict, serve_parser: Callable, engine_config: Callable) -> None:
    from vllm.entrypoints.generate.base.protocol import validate_request_mm_kwargs
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.renderers.chat_utils import parse_chat_messages

    assert sorted(captured) == ["judge", "object_crop", "object_masked", "scene", "video"]
    for call, body in captured.items():
        req = ChatCompletionRequest.model_validate(body)
        assert not req.model_extra, f"{call}: fields vLLM ignores: {sorted(req.model_extra)}"
        assert "max_tokens" not in req.model_fields_set, f"{call}: deprecated max_tokens"
        assert req.max_completion_tokens == body["max_completion_tokens"]
        args = _launch_args(shipped, serve_parser, body["model"])
        validate_request_mm_kwargs(mm_processor_kwargs=req.mm_processor_kwargs,
                                   media_io_kwargs=req.media_io_kwargs,
                                   trust_request_mm_kwargs=args.trust_request_mm_kwargs)
        sizes = _images(body)
        if not sizes:
            continue
        mc = engine_config(args).model_config
        conv, mm_data, _ = parse_chat_messages(
            req.messages, mc, args.chat_template_content_format,
            mm_processor_kwargs=req.mm_processor_kwargs)
        user = [m for m in conv if m["role"] == "user"][-1]
        sent = [p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"]
        # one placeholder per image, all ours: vLLM added none and kept our text as written
        assert isinstance(user["content"], str) and user["content"] == "\n".join(sent), call
        assert user["content"].count("<image>") == len(sizes) == len(mm_data["image"]), call
        # vLLM's InternVL processor expands each of our placeholders into that image's tokens,
        # as many as our budget counts (<img>, 256 per tile, </img>)
        proc = MULTIMODAL_REGISTRY.create_processor(mc)
        out = proc(user["content"], proc.info.parse_mm_data(mm_data),
                   hf_processor_mm_kwargs=req.mm_processor_kwargs)
        ranges = out["mm_placeholders"]["image"]
        patches = req.mm_processor_kwargs["max_dynamic_patch"]
        assert [r.length for r in ranges] == [image_tokens(w, h, patches) for w, h in sizes], call


def test_budget_counts_image_tokens_like_vllms_internvl_processor(
        captured: dict, shipped: dict, serve_parser: Callable, engine_config: Callable) -> None:
    from vllm.multimodal import MULTIMODAL_REGISTRY

    args = _launch_args(shipped, serve_parser, captured["video"]["model"])
    info = MULTIMODAL_REGISTRY.get_processing_info(engine_config(args).model_config)
    sizes = {s for b in captured.values() for s in _images(b)}
    sizes |= {(1920, 1080), (1080, 1920), (1024, 576), (448, 448), (1536, 1024), (100, 3000),
              (4000, 300), (640, 480), (33, 32)}
    checked = 0
    for patches in (1, 2, 6, 12):
        proc = info.get_hf_processor(max_dynamic_patch=patches)
        for w, h in sorted(sizes):
            theirs = proc.get_num_image_tokens(image_width=w, image_height=h)
            assert image_tokens(w, h, patches) - IMAGE_WRAP_TOKENS == theirs, (w, h, patches)
            checked += 1
    assert checked >= 40


def test_judge_schema_compiles_with_vllms_structured_output_backends(captured: dict) -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.v1.structured_output.backend_guidance import validate_guidance_grammar
    from vllm.v1.structured_output.backend_outlines import (
        validate_structured_output_request_outlines,
    )
    from vllm.v1.structured_output.backend_xgrammar import validate_xgrammar_grammar

    body = captured["judge"]
    assert body["response_format"]["type"] == "json_schema"
    req = ChatCompletionRequest.model_validate(body)
    params = req.to_sampling_params(body["max_completion_tokens"], {})
    assert params.structured_outputs is not None and params.structured_outputs.json
    validate_xgrammar_grammar(params)
    validate_guidance_grammar(params)
    validate_structured_output_request_outlines(params)
    import xgrammar

    xgrammar.Grammar.from_json_schema(params.structured_outputs.json)
