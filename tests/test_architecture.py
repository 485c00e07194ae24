"""The layering the code promises: only engine/ imports vLLM; schemas/ is pure pydantic."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_engine_owns_its_input():
    """The engine reads its own input type (engine/request.py), never the API's models nor the server's."""
    for f, names in imported_modules("engine").items():
        assert not names & {"schemas", "server"}, f
