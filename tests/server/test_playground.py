"""The browser playground used in a real headless Chromium against the real server on the tiny model. Screenshots
land in tests/artifacts/playground/ (git-ignored). What is served, and to whom: tests/app/test_playground.py."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.browser_page import browser, fill, finished, in_browser, open_page, wait_until  # noqa: F401
from tests.conftest import ROOT


ARTIFACTS = ROOT / "tests" / "artifacts" / "playground"


def sent_body(page) -> dict:
    return json.loads(page.locator("#request-json").text_content())


def stat(page, name) -> str:
    return page.locator(f'.stat[data-stat="{name}"] .stat-value').text_content()


def copied(page, button: str, what: str) -> str:
    """Clicks a copy button and returns what it put on the clipboard, once the page says it is there."""
    page.click(button)
    wait_until(page, f"document.getElementById('toast').textContent === {json.dumps('Copied ' + what)}")
    page.evaluate("document.getElementById('toast').textContent = ''")
    return page.evaluate("navigator.clipboard.readText()")


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@in_browser
def test_a_streamed_chat_arrives_piece_by_piece(browser, server):
    page = open_page(browser, server)
    # On a 2-core machine the engine's spinning worker can hold the server's sends back, so a stream may reach the
    # page in one burst; a throttled link makes it arrive in pieces whatever the server's timing.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions",
             {"offline": False, "latency": 0, "downloadThroughput": 16 * 1024, "uploadThroughput": -1})
    fill(page, max_tokens=200, ignore_eos=True, temperature=1)  # about 48 KB of frames: about 3 s on that link
    # Record every state of the reply's text as the page grows it, to see it arrive in pieces.
    page.evaluate("""() => { window.seen = []; new MutationObserver(() => {
        const t = document.querySelector('.choice .text'), f = document.querySelector('.choice .finish');
        if (t) window.seen.push([t.textContent.length, f.textContent.startsWith('finish_reason')]);
    }).observe(document.getElementById('choices'), {childList: true, subtree: true, characterData: true}); }""")
    page.locator("#messages textarea").first.focus()
    page.keyboard.press("Control+Enter")  # the keyboard sends
    finished(page)
    assert sent_body(page)["stream"] is True and sent_body(page)["ignore_eos"] is True
    partial = {length for length, done in page.evaluate("window.seen") if not done and length > 0}
    assert len(partial) >= 2, "the text should show before the reply is complete"
    assert stat(page, "completion tokens") == "200"
    assert re.fullmatch(r"\d+ ms", stat(page, "TTFT")) and float(stat(page, "tokens/s")) > 0
    assert page.locator(".choice .text").text_content().strip()
    assert page.locator("#error").is_hidden() and page.errors == []


@in_browser
def test_best_of_candidates_side_by_side_and_beams(browser, server):
    page = open_page(browser, server)
    fill(page, n=2, best_of=3, temperature=1, max_tokens=8)
    page.click("#send")
    finished(page, 2)
    body = sent_body(page)
    assert body["best_of"] == 3 and body["n"] == 2 and body["stream"] is False  # best_of > n cannot stream
    assert "stream=false" in page.locator("#note").text_content()
    assert page.locator("#legend").is_hidden()  # no logprobs asked for, no shading
    labels = page.locator(".choice h3").all_text_contents()
    assert labels == ["Choice 0 · ranked 1 of 3 candidates", "Choice 1 · ranked 2 of 3 candidates"]
    first, second = (page.locator(".choice").nth(i).bounding_box() for i in range(2))
    assert abs(first["y"] - second["y"]) < 2 and second["x"] > first["x"] + first["width"] / 2  # side by side
    assert int(stat(page, "completion tokens")) > 8  # usage counts every candidate
    fill(page, use_beam_search=True, temperature=0, best_of="", n=3)
    page.click("#send")
    finished(page, 3)
    assert page.locator(".choice h3").all_text_contents() == [f"Beam {i} of 3" for i in (1, 2, 3)]
    shot(page, "best-of-beams-desktop-light")


@in_browser
def test_logprobs_shade_tokens_and_show_alternatives(browser, server):
    page = open_page(browser, server)
    fill(page, logprobs=True, top_logprobs=3, max_tokens=8, ignore_eos=True)
    page.click("#send")
    finished(page)
    frames = [json.loads(f.removeprefix("data: ")) for f in page.locator("#raw").text_content().split("\n\n")]
    content = [t for f in frames for c in f.get("choices", []) if c.get("logprobs") for t in c["logprobs"]["content"]]
    tokens = page.locator(".choice .tok")
    assert tokens.count() == len(content) == 8 and page.locator("#legend").is_visible()
    for i, token in enumerate(content):  # each token shaded by its own probability
        shade = float(tokens.nth(i).evaluate("e => e.style.getPropertyValue('--p')"))
        assert shade == pytest.approx(math.exp(token["logprob"]), abs=1e-4)
    # A token with something to point at (random text may hold bare newlines).
    pick = next(i for i, t in enumerate(content[:-1]) if t["token"].strip())
    tokens.nth(pick).hover()
    tip = page.locator("#token-tip")
    assert tip.is_visible()
    rows = tip.locator("tbody tr")
    assert rows.count() == 3
    for row, alt in zip(rows.all(), content[pick]["top_logprobs"]):
        cells = row.locator("td").all_text_contents()
        assert cells[3] == f"{alt['logprob']:.3f}" and cells[2].endswith("%")
    assert f"{content[pick]['logprob']:.3f}" in tip.locator("p").text_content()
    shot(page, "logprobs-desktop-light")
    tokens.nth(pick).focus()  # the keyboard reaches every token and its alternatives
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.i") == str(pick + 1)
    assert f"{content[pick + 1]['logprob']:.3f}" in tip.locator("p").text_content()
    page.keyboard.press("Escape")
    assert tip.is_hidden()


@in_browser
def test_every_box_reaches_the_request_body(browser, server):
    page = open_page(browser, server)
    model = page.evaluate("page.model")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fill(page, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05, seed=7, presence_penalty=0.1,
         frequency_penalty=-0.2, repetition_penalty=1.1, logit_bias='{"128000": -100}', max_tokens=20, min_tokens=2,
         stop="END\\n\nstop", stop_token_ids="128009, 128008", ignore_eos=True, skip_special_tokens=False, n=2,
         best_of=4, length_penalty=0.8, early_stopping=True, logprobs=True, top_logprobs=3,
         response_format="json_schema", json_schema=json.dumps(schema), tools=json.dumps(tools), tool_choice="auto")
    page.click("#copy-curl")
    assert sent_body(page) == {
        "model": model, "messages": [{"role": "user", "content": "Write a haiku about llamas."}],
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7, "presence_penalty": 0.1,
        "frequency_penalty": -0.2, "repetition_penalty": 1.1, "logit_bias": {"128000": -100}, "max_tokens": 20,
        "min_tokens": 2, "stop": ["END\n", "stop"], "stop_token_ids": [128009, 128008], "n": 2, "best_of": 4,
        "length_penalty": 0.8, "ignore_eos": True, "early_stopping": True, "skip_special_tokens": False,
        "logprobs": True, "top_logprobs": 3, "stream": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}},
        "tools": tools, "tool_choice": "auto",
    }
    page.locator('input[name="mode"][value="completion"]').check()
    fill(page, echo=True)
    page.click("#copy-curl")
    body = sent_body(page)
    assert body["prompt"] == "Once upon a time" and body["echo"] is True and body["logprobs"] == 3
    assert "messages" not in body and "tools" not in body and "top_logprobs" not in body
    fill(page, logit_bias="{not json")
    page.click("#send")
    assert "logit_bias is not valid JSON" in page.locator("#error").text_content()
    assert page.locator(".choice").count() == 0  # nothing was sent


@in_browser
def test_prompt_tokens_with_ids_to_copy(browser, server):
    page = open_page(browser, server)
    page.locator('input[name="mode"][value="completion"]').check()
    page.locator("#prompt").fill("Hello world")
    page.click("#tokenize")
    chips = page.locator("#prompt-token-list .chip")
    chips.first.wait_for()
    expected = httpx.post(server.base_url + "/tokenize", json={"prompt": "Hello world"}).json()["tokens"]
    assert [int(c) for c in page.locator(".chip-id").all_text_contents()] == expected
    texts = page.locator(".chip-text").all_text_contents()
    assert texts[0] == "<|begin_of_text|>" and "".join(texts[1:]).replace("␣", " ") == "Hello world"
    assert copied(page, "#prompt-token-list .chip >> nth=1", f"token id {expected[1]}") == str(expected[1])


@in_browser
def test_copied_python_and_curl_give_the_pages_answer(browser, server, tmp_path):
    page = open_page(browser, server)
    page.locator('input[name="mode"][value="completion"]').check()
    fill(page, temperature=1, top_k=20, seed=1234, max_tokens=8, stream=False)
    page.click("#send")
    finished(page)
    shown = page.locator(".choice .text").text_content()
    python = copied(page, "#copy-python", "Python")
    assert "extra_body" in python and '"top_k": 20' in python  # top_k is not an OpenAI SDK argument
    script = tmp_path / "snippet.py"
    script.write_text(python)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert run.stdout.decode() == f"0 {shown}\n"  # the same seed and parameters: the same text
    curl = copied(page, "#copy-curl", "curl")
    if shutil.which("curl"):
        out = subprocess.run(["bash", "-c", curl], capture_output=True, timeout=120, check=True).stdout
        assert json.loads(out)["choices"][0]["text"] == shown


@in_browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize(("device", "width", "height"), [("desktop", 1280, 900), ("phone", 390, 844)])
def test_readable_at_desktop_and_phone_width_in_light_and_dark(browser, server, scheme, device, width, height):
    page = open_page(browser, server, width=width, height=height, scheme=scheme)
    fill(page, n=2, logprobs=True, top_logprobs=4, max_tokens=12, temperature=1)
    page.click("#send")
    finished(page, 2)
    page.locator(".choice .tok").filter(has_text=re.compile(r"\S")).nth(1).hover()
    shot(page, f"{device}-{scheme}")
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing runs off the side
    tip = page.locator("#token-tip").bounding_box()
    assert tip["x"] >= 0 and tip["x"] + tip["width"] <= width
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red = int(re.match(r"rgb\((\d+)", background).group(1))
    assert (red < 64) if scheme == "dark" else (red > 192)
    assert page.errors == []
