"""Serving the models: launching ``vllm serve`` (``vllm_serve``, the ``refsav serve`` commands
in ``cli``), the KV-cache arithmetic behind the default concurrency (``capacity``), a
checkpoint's context length (``checkpoint``) and waiting for a server to answer
(``readiness``)."""
