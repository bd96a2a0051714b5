"""Start ``vllm serve`` per configured model: local subprocesses or Ray actors on GPU nodes.

vLLM is never imported: it runs as its own process (the ``[vllm]`` extra, or any image that
has the ``vllm`` command), so the core pipeline installs and tests without it. A Ray actor
only reserves ``num_gpus = tensor_parallel_size`` on one node and runs the same command there;
Ray's CUDA_VISIBLE_DEVICES is inherited and vLLM is forced onto its multiprocessing executor
so it uses exactly those GPUs instead of joining the cluster as a Ray driver.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from refsav_pipeline.llm.config import ModelEndpointConfig, ModelsConfig
from refsav_pipeline.llm.prompts import load_prompt
from refsav_pipeline.serve.readiness import wait_healthy

DEFAULT_NODE_GPUS = 8
"""GPUs assumed on this node when none can be counted (planning on a machine without GPUs)."""


@dataclass
class Launch:
    """One server replica to start."""

    role: str
    replica: int
    model: ModelEndpointConfig
    argv: list[str]
    port: int
    gpus: list[int] | None = None  # local mode only
    env: dict[str, str] = field(default_factory=dict)

    @property
    def num_gpus(self) -> int:
        return self.model.vllm.tensor_parallel_size

    def shell(self) -> str:
        pre = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        if self.gpus is not None:
            pre.insert(0, "CUDA_VISIBLE_DEVICES=" + ",".join(map(str, self.gpus)))
        return " ".join([*pre, shlex.join(self.argv)])


def _json(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


def sends_mm_kwargs(models: ModelsConfig, role: str) -> bool:
    """Whether requests to ``role`` carry ``mm_processor_kwargs`` (model default or a prompt)."""
    m: ModelEndpointConfig = getattr(models, role)
    if m.mm_processor_kwargs:
        return True
    for key in type(models.prompts).model_fields:
        if key == "dir":
            continue
        tpl = load_prompt(getattr(models.prompts, key), models.prompts.dir)
        if tpl.model == role and tpl.mm_processor_kwargs:
            return True
    return False


def trusts_request_mm_kwargs(models: ModelsConfig, role: str) -> bool:
    """The launcher's ``--trust-request-mm-kwargs`` decision for ``role``."""
    v = getattr(models, role).vllm
    return v.trust_request_mm_kwargs if v.trust_request_mm_kwargs is not None \
        else sends_mm_kwargs(models, role)


def vllm_argv(m: ModelEndpointConfig, port: int, *, trust_mm_kwargs: bool = False) -> list[str]:
    """The ``vllm serve`` command line for one model (current vLLM CLI: JSON-valued dict args)."""
    v = m.vllm
    argv = ["vllm", "serve", v.model_path or m.model,
            "--served-model-name", m.name,
            "--host", v.host, "--port", str(port),
            "--tensor-parallel-size", str(v.tensor_parallel_size),
            "--max-model-len", str(v.max_model_len),
            "--dtype", v.dtype,
            "--gpu-memory-utilization", str(v.gpu_memory_utilization),
            "--distributed-executor-backend", "mp",
            "--chat-template-content-format", v.chat_template_content_format]
    if v.limit_mm_per_prompt:
        argv += ["--limit-mm-per-prompt", _json(v.limit_mm_per_prompt)]
    if v.mm_processor_kwargs:
        argv += ["--mm-processor-kwargs", _json(v.mm_processor_kwargs)]
    if trust_mm_kwargs:
        argv.append("--trust-request-mm-kwargs")
    if v.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv + list(v.extra_args)


def node_gpu_count() -> int | None:
    """GPUs visible on this node: CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``; None if unknown."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None:
        return len([d for d in vis.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return n or None


def plan(models: ModelsConfig, roles: list[str], *, local: bool,
         node_gpus: int = DEFAULT_NODE_GPUS) -> list[Launch]:
    """Every replica of every selected model; local mode also assigns this node's GPUs.

    Without explicit ``gpus``, local replicas take consecutive device ids in config order
    (captioner first). Local replicas all run on this node, so a plan needing more than its
    ``node_gpus`` GPUs is refused (ValueError) instead of naming devices the node lacks.
    """
    out: list[Launch] = []
    cursor = 0
    for role in roles:
        m: ModelEndpointConfig = getattr(models, role)
        v = m.vllm
        env = dict(v.env)
        trust = trusts_request_mm_kwargs(models, role)
        for i in range(v.replicas):
            port = v.port + i
            gpus = None
            if local:
                tp = v.tensor_parallel_size
                if v.gpus is not None:
                    if len(v.gpus) < tp * v.replicas:
                        raise ValueError(f"{role}: {v.replicas} replica(s) × tp {tp} need "
                                         f"{tp * v.replicas} GPUs, config lists {len(v.gpus)}")
                    gpus = v.gpus[i * tp:(i + 1) * tp]
                else:
                    gpus = list(range(cursor, cursor + tp))
                    cursor += tp
                bad = [g for g in gpus if g >= node_gpus]
                if bad:
                    raise ValueError(_too_many_gpus(models, roles, node_gpus))
            out.append(Launch(role, i, m, vllm_argv(m, port, trust_mm_kwargs=trust), port,
                              gpus, env))
    return out


def _too_many_gpus(models: ModelsConfig, roles: list[str], node_gpus: int) -> str:
    need = {r: getattr(models, r).vllm.replicas * getattr(models, r).vllm.tensor_parallel_size
            for r in roles}
    parts = " + ".join(f"{r} {getattr(models, r).vllm.replicas}×tp "
                       f"{getattr(models, r).vllm.tensor_parallel_size}" for r in roles)
    hint = ("run `--only captioner` on one node and `--only judge` on another, "
            if len(roles) > 1 else "lower replicas or tensor_parallel_size, ")
    return (f"local servers need {sum(need.values())} GPUs on this node ({parts}) but it has "
            f"{node_gpus}: {hint}or pass --address to let Ray place replicas on GPU nodes")


def _secret_env(launch: Launch) -> dict[str, str]:
    """The API key goes through VLLM_API_KEY so it never appears in printed commands."""
    name = launch.model.api_key_env
    if name and os.environ.get(name):
        return {"VLLM_API_KEY": os.environ[name]}
    return {}


# -- local subprocesses -----------------------------------------------------------------------

class LocalServers:
    """``vllm serve`` children of this process; stopped together."""

    def __init__(self) -> None:
        self.procs: list[tuple[Launch, subprocess.Popen[bytes]]] = []

    def start(self, launches: list[Launch]) -> None:
        for la in launches:
            env = {**os.environ, **la.env, **_secret_env(la)}
            if la.gpus is not None:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, la.gpus))
            proc = subprocess.Popen(la.argv, env=env, start_new_session=True)
            self.procs.append((la, proc))

    def wait(self, host: str) -> list[tuple[Launch, str]]:
        out = []
        for la, proc in self.procs:
            url = f"http://{host}:{la.port}/v1"
            wait_healthy(url, la.model.name, la.model.vllm.startup_timeout_s,
                         alive=lambda p=proc: p.poll() is None)
            out.append((la, url))
        return out

    def alive(self) -> bool:
        return all(p.poll() is None for _, p in self.procs)

    def stop(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


# -- Ray actors ---------------------------------------------------------------------------------

class _VllmProcess:
    """Ray actor body: runs one ``vllm serve`` on the node Ray placed it on."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], env: dict[str, str]) -> tuple[str, int]:
        import ray

        self.proc = subprocess.Popen(argv, env={**os.environ, **env},
                                     stdout=sys.stdout, stderr=sys.stderr)
        return ray.util.get_node_ip_address(), self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class RayServers:
    """One actor per replica with ``num_gpus = tensor_parallel_size``."""

    def __init__(self, address: str, *, detach: bool = False) -> None:
        import ray

        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address)
        self.detach = detach
        self.actors: list[tuple[Launch, Any, str]] = []

    def start(self, launches: list[Launch]) -> None:
        remote = self.ray.remote(_VllmProcess)
        for la in launches:
            opts: dict[str, Any] = {"num_gpus": la.num_gpus, "num_cpus": 1}
            if self.detach:
                opts.update(name=f"refsav-vllm-{la.role}-{la.replica}", lifetime="detached",
                            get_if_exists=True)
            actor = remote.options(**opts).remote()
            ip, _pid = self.ray.get(actor.start.remote(la.argv, {**la.env, **_secret_env(la)}))
            self.actors.append((la, actor, ip))

    def wait(self) -> list[tuple[Launch, str]]:
        out = []
        for la, actor, ip in self.actors:
            url = f"http://{ip}:{la.port}/v1"
            wait_healthy(url, la.model.name, la.model.vllm.startup_timeout_s,
                         alive=lambda a=actor: self.ray.get(a.alive.remote()))
            out.append((la, url))
        return out

    def alive(self) -> bool:
        return all(self.ray.get(a.alive.remote()) for _, a, _ in self.actors)

    def stop(self) -> None:
        for _, a, _ in self.actors:
            try:
                self.ray.get(a.stop.remote(), timeout=90)
            finally:
                self.ray.kill(a)
