"""The package layout shows the architecture: no import circles (lazy imports included), and
each of the model-facing packages holds only its kind."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "refsav_pipeline"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")


def import_graph(pkg: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body."""
    files = {module_name(f): f for f in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            graph[mod].update(n for n in names if n in files and n != mod)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    graph = import_graph(PKG)
    assert len(graph) > 50
    assert not circles(graph)


def test_circle_finder_finds_a_lazy_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert not circles({"a": {"b"}, "b": set()})


def test_client_serving_and_stand_ins_live_apart() -> None:
    graph = import_graph(PKG)
    llm = {m for m in graph if m.startswith("refsav_pipeline.llm.")}
    # the client never needs the offline stand-ins or the vLLM launcher
    for m in llm:
        assert not {t for t in graph[m] if t.startswith(("refsav_pipeline.reference",
                                                         "refsav_pipeline.serve.vllm_serve"))}, m
    assert {"refsav_pipeline.reference.server", "refsav_pipeline.reference.vision",
            "refsav_pipeline.reference.stub_server"} <= set(graph)
    assert {"refsav_pipeline.serve.vllm_serve", "refsav_pipeline.serve.capacity",
            "refsav_pipeline.serve.readiness", "refsav_pipeline.serve.checkpoint"} <= set(graph)
