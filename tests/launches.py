"""Server start-ups that overlap. A server start on these 2-core machines is mostly one process at a time importing
torch and vLLM (the API process, then EngineCore, then its worker), so two or three servers starting together take
little longer than one. A module declares how to launch its server with `@planned(name, group)`; its fixture
`name` gets it with `take(name, request)`. The first take in a group launches every server of that group that a
selected test needs, and waits until all of them are ready before any test runs (so no start-up competes with a
test for the CPU). Each module still stops its own server when its tests are done; groups are modules that run
one after the other, so a server launched early waits idle (about 1% of a core) for a few modules at most, except
for the group of the shared server (see below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ServerProcess


@dataclass(frozen=True)
class Plan:
    group: str
    launch: Callable[[Path, pytest.TempPathFactory], ServerProcess]  # (tiny model, tmp_path_factory) -> launched


# The groups: modules that run one after the other. Every module that takes a server is in tests/server, whose
# modules pytest runs in file-name order, after the cheaper tiers (testpaths in pyproject.toml).
# The shared server is the tier's first (test_api_errors); the connections and security servers start with it:
# each of those then waits idle until its module (the security one for most of the session), which costs memory
# (about 2.5 GB a server) but no CPU to speak of, and saves a start-up each.
WITH_THE_SHARED_SERVER = "conftest's shared `server`, test_connections, test_security"
LIMITS_TO_MODEL_MODES = "test_limits, test_lora, test_model_modes"

_PLANS: dict[str, Plan] = {}
_LAUNCHED: dict[str, ServerProcess] = {}  # launched, not yet taken by its fixture
_TAKEN: set[str] = set()


def planned(name: str, group: str):
    """Registers `launch(tiny_model, tmp_path_factory) -> ServerProcess` (not waited for) as server `name`, which
    the fixture called `name` takes."""

    def register(launch: Callable[[Path, pytest.TempPathFactory], ServerProcess]):
        _PLANS[name] = Plan(group, launch)
        return launch

    return register


def take(name: str, request: pytest.FixtureRequest) -> ServerProcess:
    """Server `name`, ready; its group's other servers that selected tests need are launched and ready too."""
    if name not in _LAUNCHED:
        group = _PLANS[name].group
        needed = {fixture for item in request.session.items for fixture in getattr(item, "fixturenames", ())}
        tiny_model = request.getfixturevalue("tiny_model")
        tmp = request.getfixturevalue("tmp_path_factory")
        members = [n for n, plan in _PLANS.items()
                   if plan.group == group and (n == name or (n in needed and n not in _TAKEN))]
        for member in members:
            if member not in _LAUNCHED:
                _LAUNCHED[member] = _PLANS[member].launch(tiny_model, tmp)
        for member in members:
            if member != name:
                try:
                    _LAUNCHED[member].wait_ready()
                except RuntimeError:
                    pass  # its own fixture reports it (wait_ready raises again on a server that has exited)
    _TAKEN.add(name)
    return _LAUNCHED.pop(name).wait_ready()


def stop_untaken() -> None:
    """Servers launched for tests that never took them (a failed run, an interrupted session)."""
    while _LAUNCHED:
        _LAUNCHED.popitem()[1].stop()
