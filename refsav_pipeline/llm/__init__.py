"""The model client: everything between rendered JPEGs and caption text, over the OpenAI API.

- ``config``: pydantic sections (``models``, ``client``)
- ``session.ModelSession``: prompts + request cache + HTTP clients; build from config + out dir
- ``calls``: ``describe_object``, ``judge_consistency``, ``describe_scene``, ``describe_video``
- ``client``: async OpenAI chat-completions client (balancing, health, retries); ``pool``: its
  keep-alive HTTP connections
- ``cache``: durable request cache; ``prompts``: versioned prompt files
- ``budget``: does a request fit the context
- ``errors``: ``RecordError`` kinds a failed call ends in; ``results``: parsed answers

Serving the models lives in ``refsav_pipeline.serve``, the offline stand-ins in
``refsav_pipeline.reference``. Submodules are not imported here, so a worker importing
``calls`` never loads FastAPI.
"""
