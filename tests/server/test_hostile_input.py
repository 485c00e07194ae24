"""Hostile input never gets a 5xx and never takes the server down: hand-written nasties and a schemathesis run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

JSON = {"content-type": "application/json"}
ROUTES = ["/v1/completions", "/completions", "/v1/chat/completions", "/chat/completions", "/tokenize"]
NASTY_BODIES = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"messages": [{"role": "user", "content": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}]}",
    b'{"prompt": "\xff\xfe\xc3\x28"}',
    b'{"prompt": "\\ud800"}',
    b'{"prompt": "x", "temperature": NaN}',
    b'{"prompt": "x", "temperature": Infinity}',
    b'{"prompt": "x", "max_tokens": -Infinity}',
    b'{"prompt": "x", "max_tokens": 1e308}',
    b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}",
    b'{"prompt": "x", "temperature": 1e-400, "top_p": 5e-324}',
    b'{"prompt": "x", "n": 1000000000000000000000}',
    b'{"prompt": "x", "seed": -9223372036854775809, "logprobs": 99999999999}',
    b'{"prompt": "x", "logit_bias": {"99999999999999999999": 100}}',
    b'{"prompt": "x", "logit_bias": "nope", "stop": [1, 2]}',
    b'{"prompt": [[1, 2], [99999999999]], "max_tokens": 1}',
    b'{"messages": {"role": "user"}, "stream": true}',
    b'{"messages": [{"role": "user", "content": 5}], "stream": "yes"}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}',
    b'{"prompt": "x", "stream": true, "stream_options": "all"}',
    b'{"prompt": null, "max_tokens": null, "n": null}',
    b'{"prompt": "x"}' * 1000,
    b"\x00" * 1000,
    b"",
    b"null",
    b'"just a string"',
    b'{"prompt": "x", "prompt": 5}',
]
NASTY_HEADERS = [
    {"x-request-id": "a" * 5000},
    {"x-request-id": "line\tbreak; rm -rf /"},
    {"x-ms-client-request-id": "\u00ff\u00fe"},
    {"extra-parameters": "\x01\x02"},
    {"extra-parameters": "pass-through" * 100},
    {"authorization": "Bearer " + "\u00e9" * 100},
    {"api-key": "x" * 8000},
    {"content-type": "text/garbage; charset=nonsense"},
    {"accept": "*/*" * 1000},
]


def _alive(server) -> None:
    assert server.proc.poll() is None
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


@pytest.mark.parametrize("route", ROUTES)
def test_nasty_bodies_never_get_5xx(server, route):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        for body in NASTY_BODIES:
            resp = c.post(route, content=body, headers=JSON)
            assert resp.status_code < 500, (route, body[:80], resp.status_code, resp.text[:300])
            if resp.status_code >= 400:
                assert "error" in resp.json()
    _alive(server)


def test_huge_body_is_413(server):
    resp = httpx.post(server.base_url + "/v1/completions", content=b'{"prompt": "' + b"x" * (5 << 20) + b'"}',
                      headers=JSON, timeout=60)
    assert resp.status_code == 413
    _alive(server)


def test_garbage_headers(server):
    body = {"prompt": "x", "max_tokens": 1}
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        for headers in NASTY_HEADERS:
            encoded = {k: v.encode("latin-1") for k, v in headers.items()}
            try:
                resp = c.post("/v1/completions", json=body, headers=encoded)
            except httpx.ProtocolError:
                continue  # a request that cannot be framed (either side refused it): fine, nothing crashed
            assert resp.status_code < 500, (headers, resp.text[:300])
            if resp.status_code == 400 and resp.text == "Invalid HTTP request received.":
                continue  # uvicorn's parser refused it before the app saw it
            rid = resp.headers.get("x-request-id", "")
            assert rid and len(rid) <= 128 and rid.isprintable() and " " not in rid, (headers, resp.status_code, resp.text)
    _alive(server)


def test_schemathesis_finds_no_server_error(server):
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(cli), "run", server.base_url + "/openapi.json", "--checks", "not_a_server_error",
         "--max-examples", "5", "--max-time", "12", "--workers", "1", "--phases", "examples,coverage,fuzzing", "--request-timeout", "30",
         "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=180,
    )
    summary = run.stdout[-3000:]
    print("\n[schemathesis]", summary[-1200:])
    assert run.returncode == 0, summary + run.stderr[-2000:]
    _alive(server)


def _deep_tool(levels: int) -> bytes:
    parameters = '{"type": "object", "properties": {"a": ' + '{"type": "array", "items": ' * levels + "{}" + \
        "}" * levels + "}}"
    return ('{"type": "function", "function": {"name": "f", "parameters": ' + parameters + "}}").encode()


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/chat/completions"])
@pytest.mark.parametrize("choice", [b'"required"', b'"auto"'])
@pytest.mark.parametrize("levels", [600, 1000])
def test_tool_parameters_nested_hundreds_deep_are_a_400_on_the_real_engine(server, route, choice, levels):
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "tools": [' + _deep_tool(levels) + \
        b'], "tool_choice": ' + choice + b"}"
    resp = httpx.post(server.base_url + route, content=body, headers=JSON, timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"]["param"] == "tools"
    _alive(server)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/chat/completions", "/tokenize"])
def test_history_tool_call_arguments_nested_1e5_deep_are_a_400_on_the_real_engine(server, route):
    arguments = "[" * 100_000 + "]" * 100_000
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                      "function": {"name": "f", "arguments": arguments}}]},
                {"role": "tool", "tool_call_id": "c", "content": "ok"}]
    body = {"messages": messages} if route == "/tokenize" else {"messages": messages, "max_tokens": 1}
    resp = httpx.post(server.base_url + route, json=body, timeout=60)
    assert resp.status_code == 400, resp.text[:300]
    assert "nest deeper than 64" in resp.json()["error"]["message"]
    _alive(server)
