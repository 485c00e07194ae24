"""A remote guard's URL may carry `user:password@`: the password authenticates, and never reaches an error body or a
log line. In process, on the scripted engine."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from server.safety.guards import RemoteGuard, start_guard
from tests.conftest import free_port
from tests.safety_doubles import running, settings

PASSWORD = "pa55-w0rd-in-the-url"


def _chat() -> dict:
    return {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_failing_guard_with_credentials_in_its_url_shows_them_nowhere(mode, caplog):
    closed_port = free_port()  # nothing listens there
    cfg = settings(guard_url=f"http://guard-user:{PASSWORD}@127.0.0.1:{closed_port}/", guard_on_error=mode)

    async def scenario():
        async with running(cfg, guard_factory=lambda c: start_guard(c, None)) as (client, _state, _engine):
            full = await client.post("/v1/chat/completions", json=_chat())
            streamed = await client.post("/v1/chat/completions", json={**_chat(), "stream": True})
            return full, streamed

    with caplog.at_level(logging.DEBUG):
        full, streamed = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert full.status_code == (200 if mode == "open" else 503)
    assert "unreachable" in full.text  # the failure is still explained
    for text in (full.text, streamed.text, caplog.text):
        assert PASSWORD not in text and "guard-user" not in text


def test_credentials_in_the_url_authenticate_and_leave_the_logged_url(caplog):
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "safe"}}]})

    async def scenario():
        guard = RemoteGuard(f"https://guard-user:{PASSWORD}@guard.example:8443/base/", None, 2)
        guard._client._transport = httpx.MockTransport(answer)
        try:
            return await guard.classify([{"role": "user", "content": "hi"}])
        finally:
            await guard.close()

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(scenario()).text == "safe"
    [request] = seen
    assert str(request.url) == "https://guard.example:8443/base/v1/chat/completions"
    assert request.headers["authorization"] == httpx.BasicAuth("guard-user", PASSWORD)._auth_header
    assert PASSWORD not in caplog.text


def test_an_unparsable_guard_url_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        RemoteGuard(f"http://guard-user:{PASSWORD}@[::1", None, 2)
    assert PASSWORD not in str(info.value)
