"""The layering the code promises: only engine/ imports vLLM; schemas/ is pure pydantic; server/'s wings import only
the wings below them (docs/ARCHITECTURE.md); the product imports nothing from tests/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[str, set[str]]:
    found = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_only_engine_imports_vllm():
    for package in ("server", "schemas"):
        offenders = [f for f, names in imported_modules(package).items() if "vllm" in names]
        assert not offenders, offenders


def test_schemas_import_nothing_of_ours_but_schemas():
    for f, names in imported_modules("schemas").items():
        assert not names & {"server", "engine", "fastapi", "starlette"}, f


def test_engine_knows_nothing_about_http():
    for f, names in imported_modules("engine").items():
        assert not names & {"server", "fastapi", "starlette", "sse_starlette"}, f


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Which of `package`'s modules each of its modules imports, at any depth of its code: imports inside
    `if TYPE_CHECKING:` and inside functions count too, since they tie the modules together just the same."""
    paths = {_module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        this_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package, one level up per extra dot
                    anchor = this_package.split(".")[: len(this_package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from server import metrics` imports the module server.metrics; `from server.x import y`, server.x.
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names]
            for target in targets:
                while target and target not in paths:  # a name inside a module: the module it is in
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of two or more modules (Tarjan), sorted: the modules tied in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sorted(group) for group in groups)


def one_cycle(graph: dict[str, set[str]], group: list[str]) -> list[str]:
    """A shortest circle from the group's first module back to itself, through the group only."""
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & set(group)):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {group}")


def test_the_cycle_finder_sees_type_only_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..c import X\n")
    (pkg / "c.py").write_text("def f():\n    import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a\n")  # into the cycle, not part of it
    graph = import_graph("pkg", tmp_path)
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert import_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert one_cycle(graph, ["pkg.a", "pkg.c", "pkg.sub.b"]) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import os\n")
    assert import_cycles(import_graph("pkg", tmp_path)) == []


def test_server_modules_import_each_other_without_a_cycle():
    # Type-only imports count: a circle of them still means no module can be read, or moved, without the others.
    graph = import_graph("server")
    cycles = import_cycles(graph)
    assert not cycles, "\n".join(f"{', '.join(c)} (e.g. {' -> '.join(one_cycle(graph, c))})" for c in cycles)


def test_engine_owns_its_input():
    """The engine reads its own input type (engine/request.py), never the API's models nor the server's."""
    for f, names in imported_modules("engine").items():
        assert not names & {"schemas", "server"}, f


# The wings of server/ (docs/ARCHITECTURE.md) and which others each may import: a wing leans only on those below it.
# The foundation (errors, settings, the event-stream framing) imports no wing; the routes and the app's assembly
# (app, cli, state) may import every wing, and no wing imports them.
FOUNDATION = {"server.errors", "server.settings", "server.engine_settings", "server.adapter_settings",
              "server.store_settings", "server.tracing_settings", "server.sse"}
ASSEMBLY = {"server.app", "server.cli", "server.state", "server.routes"}
WINGS_MAY_IMPORT = {
    "server.observe": set(),
    "server.protection": {"server.observe"},
    "server.models": {"server.observe", "server.protection"},
    "server.safety": {"server.models", "server.observe"},
    "server.store": {"server.observe"},
    "server.fleet": {"server.observe", "server.protection", "server.models", "server.store"},
    "server.pipeline": {"server.observe", "server.protection", "server.models", "server.safety", "server.store"},
}


def part_of(module: str) -> str:
    """The wing, `server` for the foundation, or the assembly part a server module belongs to."""
    if module in FOUNDATION or module == "server":
        return "server"
    wing = ".".join(module.split(".")[:2])
    assert wing in WINGS_MAY_IMPORT or wing in ASSEMBLY, f"{module} is in no wing: add it to one"
    return wing


def test_each_server_module_lives_in_a_wing_or_the_foundation():
    for module in import_graph("server"):
        part_of(module)


def test_server_wings_import_only_the_wings_below_them():
    offenders = []
    for module, imports in import_graph("server").items():
        part = part_of(module)
        if part in ASSEMBLY:
            continue
        allowed = {"server", part} | WINGS_MAY_IMPORT.get(part, set())
        offenders += [f"{module} -> {target}" for target in sorted(imports) if part_of(target) not in allowed]
    assert not offenders, "\n".join(offenders)


def test_the_product_imports_nothing_from_the_tests():
    for package in ("server", "engine", "schemas", "bench"):
        offenders = [f for f, names in imported_modules(package).items() if "tests" in names]
        assert not offenders, offenders
