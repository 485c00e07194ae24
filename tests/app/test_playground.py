"""The browser playground (GET /playground) in process: served open, its API calls keyed, off by a setting, its
form complete. In a real browser on the real server: tests/server/test_playground.py."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from schemas import ChatCompletionRequest, CompletionRequest
from server.app import create_app
from server.routes.playground import STATIC
from server.settings import Settings, load_settings

# Request fields the form deliberately has no box for: the page fills them itself or leaves them to clients.
NOT_IN_FORM = {"model", "messages", "prompt", "stream_options", "user", "suffix", "max_completion_tokens",
               "prompt_cache_key"}
KEY = "playground-key-0123456789abcdefgh"
FILES = ("playground.html", "playground.js", "playground.css")


# --- in-process: what is served, to whom (no engine: the test client runs no lifespan)


def _client(**settings) -> TestClient:
    return TestClient(create_app(Settings(**settings)), follow_redirects=False)


def test_page_and_assets_need_no_key_but_the_api_does():
    client = _client(api_keys=KEY)
    page = client.get("/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/playground/playground.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/playground/playground.css").headers["content-type"].startswith("text/css")
    assert client.get("/").headers["location"] == "playground"
    for path in ("/v1/models", "/info"):
        assert client.get(path).status_code == 401
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 401


def test_only_the_pages_own_files_are_served():
    client = _client()
    for path in ("/playground/settings.py", "/playground/..%2Froutes%2Fplayground.py", "/playground/playground.htm"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", path


def test_the_setting_turns_the_playground_off(clean_env):
    clean_env.setenv("LLAMASERVE_PLAYGROUND", "false")
    client = TestClient(create_app(load_settings()), follow_redirects=False)
    for path in ("/", "/playground", "/playground/playground.js", "/playground/playground.css"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", path


def test_the_page_loads_nothing_from_elsewhere():
    html = (STATIC / "playground.html").read_text()
    assert set(re.findall(r'(?:src|href)="([^"]+)"', html)) == {"playground/playground.js", "playground/playground.css"}
    for name in FILES:
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://|@import|url\(", text), name
        assert "<script>" not in text and " style=" not in text  # the CSP allows no inline code


def test_the_form_offers_every_field_the_api_takes():
    script = (STATIC / "playground.js").read_text()
    params = script[script.index("const PARAMS = [") : script.index("];", script.index("const PARAMS = ["))]
    offered = set(re.findall(r'\bname: "(\w+)"', params))
    accepted = set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
    assert accepted - NOT_IN_FORM - offered == set(), "add these to PARAMS in server/static/playground.js"
