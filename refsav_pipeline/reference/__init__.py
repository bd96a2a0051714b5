"""The offline stand-ins for vLLM: the reference server (``server``, answers computed from the
images by ``vision``), the fixed-latency ``stub_server`` for benchmarks, and ``testing``
helpers that build configs and images for them. Real HTTP on loopback, never a Python mock."""
