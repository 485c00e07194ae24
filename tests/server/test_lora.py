"""LoRA adapters on the real engine: chosen by `model`, loaded and unloaded at run time, refused when they do not fit,
limited per key. One server for the module: runtime loading on, an admin key, API keys with allow-lists, one adapter
named at start by a path relative to $AZUREML_MODEL_DIR."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from engine.adapters import module_dims
from tests.tiny_lora import ensure_tiny_lora, write_adapter
from server.protection.security import key_id
from tests.conftest import CACHE_DIR, ServerProcess
from tests.launches import LIMITS_TO_MODEL_MODES, planned, take
from tests.probes import access_lines, metric, wait_until

BASE = "llamaserve-tiny-llama3"
ADMIN = "admin-key-0123456789abcdef"
KEY_A, KEY_B, KEY_C = "tenant-a-key-0123456789", "tenant-b-key-0123456789", "ops-key-0123456789abcd"
PROMPT = "Once upon a time"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _lora_dirs(tiny_model: Path) -> dict[str, Path]:
    return {f"seed-{s}": ensure_tiny_lora(CACHE_DIR, tiny_model, seed=s) for s in (1, 2, 3)}


@pytest.fixture(scope="module")
def lora_dirs(tiny_model: Path) -> dict[str, Path]:
    return _lora_dirs(tiny_model)


@planned("srv", group=LIMITS_TO_MODEL_MODES)
def _launch_srv(tiny_model: Path, tmp_path_factory) -> ServerProcess:
    lora_dirs = _lora_dirs(tiny_model)
    access = {key_id(KEY_A): ["alpha"], KEY_B: ["beta"]}  # by key id, and by the key itself
    return ServerProcess(
        [
            "--model", str(tiny_model), "--served-model-name", BASE,
            "--enforce-eager", "--cpu-kvcache-space-gib", "1", "--dtype", "bfloat16",
            "--rate-limit-rpm", "0", "--rate-limit-tpm", "0",
            "--api-keys", f"{KEY_A},{KEY_B},{KEY_C}", "--admin-api-keys", ADMIN,
            "--allow-runtime-lora", "--max-lora-rank", "8", "--max-loras", "2", "--max-cpu-loras", "2",
            "--lora", "alpha=seed-1", "--lora-access", json.dumps(access), "--metrics-require-key",
        ],
        env={"AZUREML_MODEL_DIR": str(lora_dirs["seed-1"].parent)},
    )


@pytest.fixture(scope="module")
def srv(request):
    process = take("srv", request)
    yield process
    process.stop_in_background()


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=srv.base_url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def beta(http, lora_dirs):
    """tenant B's adapter, loaded at run time."""
    r = http.post("/v1/load_lora_adapter", headers=bearer(ADMIN),
                  json={"lora_name": "beta", "lora_path": str(lora_dirs["seed-2"])})
    assert r.status_code == 200, r.text
    return r.json()


def greedy(http, model: str, key: str = KEY_C, **extra) -> str:
    r = http.post("/v1/completions", headers=bearer(key),
                  json={"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True, **extra})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == model
    return r.json()["choices"][0]["text"]


def test_models_lists_base_and_adapters_with_their_parent(http, beta):
    data = http.get("/v1/models", headers=bearer(KEY_C)).json()["data"]
    cards = {m["id"]: m for m in data}
    assert set(cards) == {BASE, "alpha", "beta"}
    assert cards["alpha"]["parent"] == cards["beta"]["parent"] == BASE
    assert "parent" not in cards[BASE]
    assert beta["id"] == "beta" and beta["parent"] == BASE


def test_adapter_changes_greedy_output_and_is_deterministic(http, beta):
    base = greedy(http, BASE)
    alpha = greedy(http, "alpha")
    assert alpha != base
    assert greedy(http, "alpha") == alpha
    assert greedy(http, "beta") not in (alpha, base)  # another fine-tune, another output
    assert greedy(http, BASE) == base  # the base is untouched by the adapters in between


def test_chat_and_azure_routes_take_the_adapter(http):
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    texts = {}
    for route, model in [("/v1/chat/completions", BASE), ("/v1/chat/completions", "alpha"), ("/chat/completions", "alpha")]:
        r = http.post(route, headers=bearer(KEY_A), json={**body, "model": model})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
        texts[(route, model)] = r.json()["choices"][0]["message"]["content"]
    assert texts[("/v1/chat/completions", "alpha")] == texts[("/chat/completions", "alpha")]
    assert texts[("/v1/chat/completions", "alpha")] != texts[("/v1/chat/completions", BASE)]


def test_streaming_on_an_adapter_matches_the_full_answer(srv, http):
    oai = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY_C, max_retries=0)
    chunks = list(oai.completions.create(model="alpha", prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                         extra_body={"ignore_eos": True}))
    assert {c.model for c in chunks} == {"alpha"}
    assert "".join(c.choices[0].text for c in chunks if c.choices) == greedy(http, "alpha")


def test_best_of_and_beam_search_run_on_the_adapter(http):
    # best_of at vLLM's lowest temperature picks among copies of the greedy answer: the adapter's, not the base's.
    near_greedy = {"temperature": 0.01, "n": 1, "best_of": 2}
    r = http.post("/v1/completions", headers=bearer(KEY_C),
                  json={"model": "alpha", "prompt": PROMPT, "max_tokens": 12, "ignore_eos": True, **near_greedy})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 24  # both candidates are counted
    assert r.json()["choices"][0]["text"] == greedy(http, "alpha")
    beams = {}
    for model in (BASE, "alpha"):
        r = http.post("/v1/completions", headers=bearer(KEY_C),
                      json={"model": model, "prompt": PROMPT, "max_tokens": 6, "use_beam_search": True, "best_of": 2,
                            "ignore_eos": True})
        assert r.status_code == 200, r.text
        beams[model] = r.json()["choices"][0]["text"]
    assert beams["alpha"] != beams[BASE]


def test_load_list_use_unload_then_404(http, lora_dirs):
    admin = bearer(ADMIN)
    r = http.post("/v1/load_lora_adapter", headers=admin, json={"lora_name": "gamma", "lora_path": str(lora_dirs["seed-3"])})
    assert r.status_code == 200, r.text
    assert "gamma" in {m["id"] for m in http.get("/v1/models", headers=bearer(KEY_C)).json()["data"]}
    assert greedy(http, "gamma") != greedy(http, BASE)
    again = http.post("/v1/load_lora_adapter", headers=admin, json={"lora_name": "gamma", "lora_path": str(lora_dirs["seed-3"])})
    assert again.status_code == 409 and again.json()["error"]["code"] == "adapter_exists"
    replaced = http.post("/v1/load_lora_adapter", headers=admin,
                         json={"lora_name": "gamma", "lora_path": str(lora_dirs["seed-1"]), "load_inplace": True})
    assert replaced.status_code == 200, replaced.text
    assert greedy(http, "gamma") == greedy(http, "alpha")  # gamma now has alpha's weights
    r = http.post("/v1/unload_lora_adapter", headers=admin, json={"lora_name": "gamma"})
    assert r.status_code == 200, r.text
    assert "gamma" not in {m["id"] for m in http.get("/v1/models", headers=bearer(KEY_C)).json()["data"]}
    gone = http.post("/v1/completions", headers=bearer(KEY_C), json={"model": "gamma", "prompt": PROMPT, "max_tokens": 2})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    twice = http.post("/v1/unload_lora_adapter", headers=admin, json={"lora_name": "gamma"})
    assert twice.status_code == 404 and twice.json()["error"]["code"] == "adapter_not_found"


def _bad_adapters(root: Path, base: Path) -> dict[str, tuple[Path, int, str]]:
    """name -> (directory, expected status, words the message must contain)."""
    cases = {"absent": (root / "absent", 404, "no adapter")}

    def case(name: str, status: int, word: str, **kwargs) -> Path:
        cases[name] = (root / name, status, word)
        return write_adapter(root / name, base, seed=4, **kwargs)

    (case("no-weights", 400, "adapter_model.safetensors") / "adapter_model.safetensors").unlink()
    (case("no-config", 400, "adapter_config.json") / "adapter_config.json").unlink()
    case("rank-16", 400, "max_lora_rank", rank=16)
    case("foreign-module", 400, "foo_proj", targets=("q_proj", "foo_proj"))
    dims = module_dims(json.loads((base / "config.json").read_text()))
    case("other-base", 400, "another base model", dims={m: (2 * i, 2 * o) for m, (i, o) in dims.items()})
    case("dora", 400, "refused the adapter: vLLM does not yet support DoRA.", config_overrides={"use_dora": True})  # passes our checks; vLLM refuses it
    weights = case("truncated", 400, "cannot be read") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return cases


def test_bad_adapters_are_refused_and_the_server_keeps_serving(http, tiny_model, lora_dirs, tmp_path):
    before = greedy(http, "alpha")
    for name, (path, status, word) in _bad_adapters(tmp_path, tiny_model).items():
        r = http.post("/v1/load_lora_adapter", headers=bearer(ADMIN), json={"lora_name": name, "lora_path": str(path)})
        assert r.status_code == status, (name, r.text)
        assert word in r.json()["error"]["message"], (name, r.text)
        assert name not in {m["id"] for m in http.get("/v1/models", headers=bearer(KEY_C)).json()["data"]}
    assert http.get("/health").status_code == 200
    assert greedy(http, "alpha") == before


def test_allow_list_hides_another_tenants_adapter(http, beta):
    for key, own, other in [(KEY_A, "alpha", "beta"), (KEY_B, "beta", "alpha")]:
        assert greedy(http, own, key)
        assert greedy(http, BASE, key)
        r = http.post("/v1/completions", headers=bearer(key), json={"model": other, "prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        listed = {m["id"] for m in http.get("/v1/models", headers=bearer(key)).json()["data"]}
        assert listed == {BASE, own}
        for model, status in ((own, 200), (other, 404)):
            assert http.post("/tokenize", headers=bearer(key), json={"model": model, "prompt": "hi"}).status_code == status


def test_admin_routes_take_only_the_admin_key(http, lora_dirs):
    body = {"lora_name": "delta", "lora_path": str(lora_dirs["seed-3"])}
    assert http.post("/v1/load_lora_adapter", json=body).status_code == 401
    for key in (KEY_A, KEY_C):
        r = http.post("/v1/load_lora_adapter", headers=bearer(key), json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_required"
        assert http.post("/v1/unload_lora_adapter", headers=bearer(key), json={"lora_name": "alpha"}).status_code == 403
    # and the admin key is no API key
    r = http.post("/v1/completions", headers=bearer(ADMIN), json={"prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 401
    assert "delta" not in {m["id"] for m in http.get("/v1/models", headers=bearer(KEY_C)).json()["data"]}


def test_models_show_adapters_paths_to_the_admin_key_only(http, beta, lora_dirs):
    for key in (KEY_A, KEY_B, KEY_C):
        resp = http.get("/v1/models", headers=bearer(key))
        assert resp.status_code == 200
        assert all("root" not in card for card in resp.json()["data"])
        assert str(lora_dirs["seed-2"]) not in resp.text
    cards = {m["id"]: m for m in http.get("/v1/models", headers=bearer(ADMIN)).json()["data"]}
    assert cards["beta"]["root"] == str(lora_dirs["seed-2"]) and cards["alpha"]["root"] == "seed-1"


def test_metrics_name_adapters_to_the_admin_key_only(http, beta):
    # Both adapters have served a request, so their series exist (ours by model, vLLM's lora_requests_info).
    for model, key in (("alpha", KEY_A), ("beta", KEY_B)):
        r = http.post("/v1/completions", headers=bearer(key), json={"model": model, "prompt": PROMPT, "max_tokens": 2})
        assert r.status_code == 200, r.text
    admin = bearer(ADMIN)
    assert wait_until(lambda: metric(http.get("/metrics", headers=admin).text, "llamaserve_adapter_requests_total",
                                     model="beta"), 10)
    assert "vllm:lora_requests_info" in http.get("/metrics", headers=admin).text
    assert http.get("/metrics").status_code == 401
    for key in (KEY_A, KEY_B, KEY_C):
        text = http.get("/metrics", headers=bearer(key)).text
        assert "vllm:num_requests_running" in text and "llamaserve_requests_total" in text  # the rest is there
        assert '"alpha"' not in text and '"beta"' not in text and "lora_requests_info" not in text
        assert "llamaserve_adapter_" not in text


def test_metrics_and_access_log_name_the_adapter(srv, http):
    text = http.get("/metrics", headers=bearer(ADMIN)).text
    before = metric(text, "llamaserve_adapter_requests_total", model="alpha") or 0
    tokens_before = metric(text, "llamaserve_adapter_completion_tokens_total", model="alpha") or 0
    r = http.post("/v1/completions", headers={**bearer(KEY_C), "x-request-id": "lora-metrics-probe"},
                  json={"model": "alpha", "prompt": PROMPT, "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200

    def scraped() -> str:
        return http.get("/metrics", headers=bearer(ADMIN)).text

    # Counts land when the request's last byte has gone, a moment after the client has the body.
    assert wait_until(lambda: metric(scraped(), "llamaserve_adapter_requests_total", model="alpha") == before + 1, 10)
    assert metric(scraped(), "llamaserve_adapter_completion_tokens_total", model="alpha") == tokens_before + 5

    def logged() -> list[dict]:
        return [line for line in access_lines(srv.log_tail(10**7)) if line["request_id"] == "lora-metrics-probe"]

    assert wait_until(lambda: bool(logged()), 10)
    assert logged()[0]["model"] == "alpha"
