"""POST bodies are JSON declared as `application/json`: anything else is 415 in the error shape, on every POST route.

In process, on the scripted engine: a `text/plain` POST is what any web page can make a browser send."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.scripted_engine import InProcess, ScriptedEngine, settings

BODIES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/completions": {"prompt": "hi", "max_tokens": 2},
    "/completions": {"prompt": "hi", "max_tokens": 2},
    "/tokenize": {"prompt": "hi"},
    "/v1/tokenize": {"prompt": "hi"},
    "/detokenize": {"tokens": [104, 105]},
    "/v1/detokenize": {"tokens": [104, 105]},
    "/v1/load_lora_adapter": {"lora_name": "a", "lora_path": "/nowhere"},
    "/v1/unload_lora_adapter": {"lora_name": "a"},
}
NOT_JSON = [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x", "application/jsonx", "application/json-seq"]


def _post_all(cfg, content_type: str | None, paths=tuple(BODIES)):
    async def main():
        async with InProcess(ScriptedEngine(), cfg) as client:
            out = {}
            for path in paths:
                body = BODIES[path]
                headers = {"authorization": "Bearer admin"}
                if content_type is not None:
                    headers["content-type"] = content_type
                out[path] = await client.post(path, content=orjson.dumps(body), headers=headers)
            return out

    return asyncio.run(main())


def _cfg():
    return settings(allow_runtime_lora=True, admin_api_keys="admin")


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_body_not_declared_json_is_415_everywhere(clean_env, content_type):
    for path, resp in _post_all(_cfg(), content_type).items():
        assert resp.status_code == 415, (path, resp.status_code, resp.text)
        body = resp.json()
        assert body["error"]["code"] == body["code"] == "unsupported_media_type"
        assert body["status"] == body["error"]["status"] == 415
        assert "application/json" in body["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_json_with_or_without_parameters_is_served(clean_env, content_type):
    # The adapter routes' JSON bodies are served by tests/server/test_lora.py (the scripted engine loads no adapter).
    served = [path for path in BODIES if not path.endswith("_lora_adapter")]
    for path, resp in _post_all(_cfg(), content_type, served).items():
        assert resp.status_code == 200, (path, resp.text)
