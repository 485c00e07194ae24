"""API keys: every route but the probes needs one when keys are set; keys never reach the logs; the playground page
shows a wrong key's 401 and keeps the key for the tab only (in a real browser, on this module's keyed server)."""

from __future__ import annotations

import hashlib

import httpx
import openai
import pytest

from tests.conftest import ServerProcess
from tests.launches import WITH_THE_SHARED_SERVER, planned, take
from tests.browser_page import browser, fill, finished, in_browser, open_page  # noqa: F401
from tests.browser_page import wait_until
from tests.probes import access_lines
from tests.probes import wait_until as wait_for

ENV_KEYS = ("primary-key-0123456789abcdefghij", "secondary-key-0123456789abcdefgh")
FILE_KEY = "file-key-0123456789abcdefghijklmno"
KEY = ENV_KEYS[1]  # the playground test's key
COMPLETION = {"prompt": "hello", "max_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
CLOSED = [
    ("GET", "/info", None),
    ("GET", "/v1/models", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/completions", COMPLETION),
    ("POST", "/completions", COMPLETION),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/chat/completions", CHAT),
    ("POST", "/tokenize", {"prompt": "x"}),
    ("GET", "/no-such-route", None),
]


@planned("keyed", group=WITH_THE_SHARED_SERVER)
def _launch_keyed(tiny_model, tmp_path_factory) -> ServerProcess:
    key_file = tmp_path_factory.mktemp("secrets") / "keys"
    key_file.write_text(f"\ufeff# rotated 2026-11: the old key is gone\n\n  {FILE_KEY}\n\n")  # BOM, comment, blanks
    return ServerProcess(
        ["--api-key-file", str(key_file), "--metrics-require-key", "--log-prompts"],
        env={"LLAMASERVE_API_KEYS": ",".join(ENV_KEYS)},
    )


@pytest.fixture(scope="module")
def keyed(request):
    srv = take("keyed", request)
    yield srv
    srv.stop_in_background()


def _call(srv, method, path, body, headers=None):
    return httpx.request(method, srv.base_url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), CLOSED)
def test_routes_refuse_requests_without_a_key(keyed, method, path, body):
    resp = _call(keyed, method, path, body)
    assert resp.status_code == 401, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error"
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer wrong"}, {"api-key": "wrong"}, {"authorization": f"Basic {ENV_KEYS[0]}"},
    {"authorization": "Bearer " + ENV_KEYS[0][:-1]}, {"authorization": "Bearer " + ENV_KEYS[0] + "x"},
])
def test_wrong_keys_are_refused(keyed, headers):
    resp = _call(keyed, "POST", "/v1/completions", COMPLETION, headers)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


def test_probes_stay_open(keyed):
    assert _call(keyed, "GET", "/health", None).status_code == 200
    assert _call(keyed, "GET", "/ready", None).status_code == 200


@pytest.mark.parametrize("key", [*ENV_KEYS, FILE_KEY])
@pytest.mark.parametrize("header", ["bearer", "api-key"])
def test_every_configured_key_works_in_either_header(keyed, key, header):
    headers = {"authorization": f"Bearer {key}"} if header == "bearer" else {"api-key": key}
    for method, path, body in CLOSED[:-1]:
        resp = _call(keyed, method, path, body, headers)
        assert resp.status_code == 200, (path, resp.text)


def test_openai_sdk_with_a_key(keyed):
    client = openai.OpenAI(base_url=keyed.base_url + "/v1", api_key=ENV_KEYS[1], max_retries=0)
    assert client.chat.completions.create(model="llamaserve-tiny-llama3", **CHAT).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.base_url + "/v1", api_key="nope", max_retries=0).models.list()


def test_logs_name_the_key_by_id_never_by_value(keyed):
    _call(keyed, "POST", "/v1/completions", {"prompt": "secret-prompt-text", "max_tokens": 2},
          {"api-key": FILE_KEY, "x-request-id": "sec-log-1"})
    # The access line is written once the response's last byte has gone, which may be just after the client has it.
    def logged() -> list[dict]:
        return [line for line in access_lines(keyed.log_tail(10**7)) if line["request_id"] == "sec-log-1"]

    assert wait_for(lambda: bool(logged()), 10)
    log = keyed.log_tail(10**7)
    assert all(k not in log for k in (*ENV_KEYS, FILE_KEY))
    line = logged()[0]
    assert line["key_id"] == hashlib.sha256(FILE_KEY.encode()).hexdigest()[:8]
    assert "secret-prompt-text" in line["prompt"][0] and len(line["output"]) == 1  # --log-prompts is on here


def test_an_open_server_warns_loudly(server):
    assert "NO API KEY IS CONFIGURED" in server.log_path.read_text(errors="replace")


@in_browser
def test_a_wrong_key_shows_the_401_and_the_key_stays_in_the_tab(browser, keyed):
    page = open_page(browser, keyed, wait_model=False)  # the page itself needs no key
    wait_until(page, "document.getElementById('model').textContent.includes('401')")
    page.locator("#api-key").fill("not-the-key")
    page.click("#send")
    page.locator("#error").wait_for()
    error = page.locator("#error")
    assert "HTTP 401" in error.text_content()
    assert page.locator(".error-message").text_content() == "Incorrect API key provided"
    assert '"invalid_api_key"' in error.locator("pre").text_content()  # the body as the API returned it
    page.locator("#api-key").fill(KEY)
    assert page.evaluate("sessionStorage.getItem('llamaserve.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0
    page.reload()
    wait_until(page, "document.getElementById('model').textContent.includes('context')")
    assert page.locator("#api-key").input_value() == KEY
    fill(page, max_tokens=4)
    page.click("#send")
    finished(page)
    assert page.locator("#error").is_hidden()
    other_tab = open_page(browser, keyed, wait_model=False)  # a new session starts without it
    assert other_tab.locator("#api-key").input_value() == ""
