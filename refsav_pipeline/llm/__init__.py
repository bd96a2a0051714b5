"""The model layer: everything between rendered JPEGs and caption text, over the OpenAI API.

- ``config``: pydantic sections (``models``, ``client``, ``reference_server``)
- ``session.ModelSession``: prompts + request cache + HTTP clients; build from config + out dir
- ``calls``: ``describe_object``, ``judge_consistency``, ``describe_scene``, ``describe_video``
- ``client``: async OpenAI chat-completions client (balancing, health, retries)
- ``cache``: durable SQLite request cache; ``prompts``: versioned prompt files
- ``reference_server`` / ``reference_vision``: the offline server; ``vllm_serve``: vLLM launch;
  ``readiness``: waiting for any of them to answer
- ``budget``: does a request fit the context; ``capacity``: KV-cache arithmetic behind the
  default concurrency; ``checkpoint``: a checkpoint's context from its config.json
- ``errors``: ``RecordError`` kinds a failed call ends in

Submodules are not imported here, so a worker importing ``calls`` never loads FastAPI.
"""
