"""docs/DEPLOY.md's verification steps are requests the server accepts, on its routes, in the order that tells
apart a loading model, a wrong preset, a broken proxy and open access."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from schemas import ChatCompletionRequest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "DEPLOY.md").read_text()


def verify_commands() -> list[list[str]]:
    section = GUIDE[GUIDE.index("## Verify a deployment"):GUIDE.index("## Rollouts")]
    block = section[section.index("```sh") + 5:section.index("```", section.index("```sh") + 5)]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_verification_walks_ready_model_completion_stream_and_auth():
    commands = verify_commands()
    paths = [next(a for a in c if a.startswith("$ENDPOINT")).removeprefix("$ENDPOINT") for c in commands]
    assert paths == ["/ready", "/v1/models", "/v1/chat/completions", "/v1/chat/completions", "/info"]
    for command in commands[:4]:
        assert "Authorization: Bearer $API_KEY" in command, "Azure's gateway wants the key on every route"
        assert "-fsS" in command[1] or "-fsSN" in command[1], "curl must fail loudly on an HTTP error"
    assert "Authorization: Bearer $API_KEY" not in commands[4], "the last step shows a request without a key fails"
    bodies = [json.loads(c[c.index("-d") + 1]) for c in commands if "-d" in c]
    assert len(bodies) == 2
    for body in bodies:
        ChatCompletionRequest.model_validate(body)
    assert bodies[1]["stream"] is True and "N" in commands[3][1], "curl -N shows events as they arrive"
