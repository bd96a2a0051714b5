"""`refsav serve` commands, config wiring and prompt files."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from refsav_pipeline.config import PipelineConfig
from refsav_pipeline.llm.config import PromptRef, PromptsConfig
from refsav_pipeline.llm.prompts import load_prompt
from refsav_pipeline.reference.testing import crop, object_frame, to_jpeg
from refsav_pipeline.reference.vision import decode_jpeg
from refsav_pipeline.serve.cli import serve_app
from refsav_pipeline.serve.readiness import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "configs" / "refsav-internvl2-76b-qwen2-72b.yaml"
LOCAL = ROOT / "configs" / "local-reference.yaml"


def _commands(output: str) -> list[list[str]]:
    return [shlex.split(line) for line in output.splitlines() if line and not line.startswith("#")]


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_dry_run_prints_the_vllm_commands() -> None:
    res = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                         "--node-gpus", "16"])
    assert res.exit_code == 0, res.output
    cmds = _commands(res.output)
    assert len(cmds) == 3  # captioner ×1 (tp 8), judge ×2 (tp 4)
    cap, judge0, judge1 = cmds
    assert cap[0] == "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7"
    assert cap[1:4] == ["vllm", "serve", "OpenGVLab/InternVL2-Llama3-76B"]
    assert _opt(cap, "--tensor-parallel-size") == "8"
    assert json.loads(_opt(cap, "--limit-mm-per-prompt")) == {"image": 8}
    assert json.loads(_opt(cap, "--mm-processor-kwargs")) == {"max_dynamic_patch": 6}
    assert _opt(cap, "--max-model-len") == "8192" and "--trust-remote-code" in cap
    assert "--trust-request-mm-kwargs" in cap and "--trust-request-mm-kwargs" not in judge0
    assert _opt(cap, "--chat-template-content-format") == "string"
    assert _opt(cap, "--served-model-name") == "InternVL2-Llama3-76B"
    assert _opt(cap, "--port") == "8000"
    assert judge0[1:4] == ["vllm", "serve", "Qwen/Qwen2-72B-Instruct"]
    assert _opt(judge0, "--tensor-parallel-size") == "4" and "--trust-remote-code" not in judge0
    assert "--limit-mm-per-prompt" not in judge0
    assert (_opt(judge0, "--port"), _opt(judge1, "--port")) == ("8100", "8101")
    assert judge0[0] == "CUDA_VISIBLE_DEVICES=8,9,10,11"  # a 16-GPU node


def test_vllm_local_plan_never_names_gpus_the_node_lacks() -> None:
    both = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                          "--node-gpus", "8"])
    assert both.exit_code == 2
    assert "need 16 GPUs" in both.output and "--only captioner" in both.output
    judges = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                            "--node-gpus", "8", "--only", "judge"])
    assert judges.exit_code == 0, judges.output
    assert [c[0] for c in _commands(judges.output)] == ["CUDA_VISIBLE_DEVICES=0,1,2,3",
                                                        "CUDA_VISIBLE_DEVICES=4,5,6,7"]


def test_vllm_dry_run_prints_the_kv_arithmetic_per_replica() -> None:
    res = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                         "--address", "auto"])
    assert res.exit_code == 0, res.output
    cap_line = next(ln for ln in res.output.splitlines() if ln.startswith("# captioner per"))
    assert "80 layers × 8 heads × 128 × 2 × 2 B = 320 KiB" in cap_line
    assert "max_model_len 8192" in cap_line
    cfg = PipelineConfig.load(REAL)
    start = cfg.models.captioner.start_concurrency
    assert f"client max_concurrency auto, starting at {start} per endpoint" in cap_line
    assert start >= 100  # hundreds of 8K requests fit
    assert 16 < cfg.models.judge.start_concurrency < start


def test_vllm_refuses_max_model_len_above_the_checkpoint(tmp_path: Path) -> None:
    """A config.json in the HF cache (offline) with an 8K context: 16K is refused up front."""
    snap = tmp_path / "hub" / "models--OpenGVLab--InternVL2-Llama3-76B" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(
        {"architectures": ["InternVLChatModel"],
         "llm_config": {"max_position_embeddings": 8192, "num_hidden_layers": 80}}))
    cfg = yaml.safe_load(REAL.read_text())
    cfg["models"]["captioner"]["vllm"]["max_model_len"] = 16384
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    res = CliRunner().invoke(serve_app, ["vllm", "--config", str(path), "--dry-run",
                                         "--address", "auto"], env=env)
    assert res.exit_code == 2
    assert "max_model_len 16384 is longer than the checkpoint's context 8192" in res.output
    ok = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                        "--address", "auto"], env=env)
    assert ok.exit_code == 0, ok.output


def test_vllm_dry_run_on_ray_and_only_one_role() -> None:
    res = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                         "--address", "auto", "--only", "judge"])
    assert res.exit_code == 0, res.output
    assert res.output.count("ray actor num_gpus=4") == 2
    cmds = _commands(res.output)
    assert [c[:3] for c in cmds] == [["vllm", "serve", "Qwen/Qwen2-72B-Instruct"]] * 2
    bad = CliRunner().invoke(serve_app, ["vllm", "--config", str(REAL), "--dry-run",
                                         "--only", "painter"])
    assert bad.exit_code != 0


def test_serve_reference_subprocess(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "from refsav_pipeline.serve.cli import serve_app; serve_app()"
    env = {**os.environ, "NO_PROXY": "*"}
    proc = subprocess.Popen([sys.executable, "-c", code, "reference", "--config", str(LOCAL),
                             "--port", str(port), "--latency", "0.01"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_healthy(url, "Qwen2-72B-Instruct", 30, alive=lambda: proc.poll() is None,
                     poll_s=0.2)
        r = httpx.get(f"{url}/models", trust_env=False, timeout=5)
        assert {m["id"] for m in r.json()["data"]} == {"InternVL2-Llama3-76B",
                                                       "Qwen2-72B-Instruct"}
        from refsav_pipeline.llm.client import jpeg_part

        frame, mask = object_frame("orange", 100, 100)
        body = {"model": "InternVL2-Llama3-76B", "messages": [{"role": "user", "content": [
            jpeg_part(to_jpeg(crop(frame, mask))), {"type": "text", "text": "<image>\nWhat?"}]}]}
        r = httpx.post(f"{url}/chat/completions", json=body, trust_env=False, timeout=10)
        out = r.json()
        text = out["choices"][0]["message"]["content"]
        assert text == "An orange object in the center of the image."
        assert out["usage"]["total_tokens"] == (out["usage"]["prompt_tokens"]
                                                + out["usage"]["completion_tokens"])
        assert httpx.get(f"http://127.0.0.1:{port}/stats", trust_env=False).json()[
            "chat_completions"] == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_fingerprint_ignores_serving_but_not_models_prompts_sampling() -> None:
    real = PipelineConfig.load(REAL)
    local = PipelineConfig.load(LOCAL)
    # Endpoints, concurrency, client and vLLM launch options differ; answers would not.
    # The paper config's masklet selection (manual only) does change rows.
    assert real.model_copy(update={"selection": local.selection}).fingerprint() == \
        local.fingerprint() != real.fingerprint()
    data = real.model_dump()
    for path, value in [(("models", "captioner", "model"), "OpenGVLab/InternVL2-26B"),
                        (("models", "prompts", "scene", "version"), 2),
                        (("models", "judge", "sampling", "temperature"), 0.7),
                        (("models", "captioner", "mm_processor_kwargs"),
                         {"max_dynamic_patch": 12})]:
        d = json.loads(json.dumps(data))
        node = d
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        assert PipelineConfig.model_validate(d).fingerprint() != real.fingerprint(), path
    with pytest.raises(ValueError):
        PipelineConfig.model_validate({"models": {"captioner": {"model": "x", "bogus": 1}}})


def test_prompt_files_load_render_and_check_versions(tmp_path: Path) -> None:
    cfg = PromptsConfig()
    for key in ("object_crop", "object_masked", "judge", "scene", "video"):
        tpl = load_prompt(getattr(cfg, key))
        assert tpl.ref == str(getattr(cfg, key)) and len(tpl.digest) == 64
    video = load_prompt(cfg.video)
    _, text = video.render(8, scene_description="SCENE")
    assert text.startswith("Image-1: <image>\nImage-2: <image>\n") and "Image-8: <image>" in text
    assert "SCENE" in text and "These 8 images" in text
    assert video.mm_processor_kwargs == {"max_dynamic_patch": 2}
    _, one = load_prompt(cfg.scene).render(1, object_description="OBJ")
    assert one.startswith("<image>\n") and one.count("<image>") == 1
    with pytest.raises(ValueError):
        video.render(9, scene_description="x")
    # a file whose declared version disagrees with its name is refused
    src = (ROOT / "prompts" / "scene_caption.v1.yaml").read_text()
    (tmp_path / "scene_caption.v2.yaml").write_text(src)
    with pytest.raises(ValueError, match="declares"):
        load_prompt(PromptRef(id="scene_caption", version=2), tmp_path)


def test_jpeg_roundtrip_helper() -> None:
    frame, mask = object_frame("red", 50, 50)
    assert decode_jpeg(to_jpeg(frame)).shape == frame.shape


def test_checkpoint_context_as_vllm_derives_it(tmp_path: Path) -> None:
    from refsav_pipeline.serve.checkpoint import context_length, max_model_len_problem

    assert context_length({"llm_config": {"max_position_embeddings": 8192}}) == 8192
    assert context_length({"text_config": {"max_position_embeddings": 4096,
                                           "max_seq_len": 2048}}) == 2048
    linear = {"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4}}
    assert context_length(linear) == 16384
    yarn = {"max_position_embeddings": 32768,
            "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 1}}
    assert context_length(yarn) == 32768
    assert context_length({"hidden_size": 8}) is None
    local = tmp_path / "weights"
    local.mkdir()
    assert max_model_len_problem(str(local), 99999) is None  # no config.json: not checked
    (local / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    assert max_model_len_problem(str(local), 32768) is None
    assert "context 32768" in (max_model_len_problem(str(local), 65536) or "")
