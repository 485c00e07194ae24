"""Token limits charge what a request used: reserved at admission, settled when its exchange ends.
In process, on the real Limits, Job and Exchange (no engine: the admission logic runs before it)."""

from __future__ import annotations

import asyncio

import pytest

from schemas import CompletionRequest
from server import render
from server.errors import APIError
from server.job import Job
from server.limits import Limits
from server.exchange import Exchange
from server.settings import Settings
from tests.engine_inputs import engine_input

TPM = 5000
PROMPT = [1] * 10


def _job(max_tokens: int, n: int = 1, prompt: list[int] = PROMPT) -> Job:
    req = CompletionRequest.model_validate({"prompt": prompt, "max_tokens": max_tokens, "n": n, "temperature": 1})
    return Job("cmpl-test", req, render.CompletionFlavor(), [prompt], engine_input(req, [prompt]))


def _exchange(key: str = "key-a") -> Exchange:
    return Exchange("rid", "POST", "/v1/completions", "203.0.113.7", key_id=key)


def _headers(ex: Exchange) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in ex.response_headers}


async def _serve(limits: Limits, job: Job, generated: int | None, key: str = "key-a") -> Exchange:
    """One request through admission to its end, having generated `generated` tokens."""
    ex = _exchange(key)
    await limits.admit(job, ex)
    ex.completion_tokens = generated
    ex.close()  # what RequestContextMiddleware does after the last byte
    return ex


@pytest.fixture
def limits() -> Limits:
    return Limits(Settings(rate_limit_rpm=0, rate_limit_tpm=TPM))


def test_the_unused_part_of_a_reservation_comes_back_when_the_request_ends(limits):
    async def main() -> list[int]:
        remaining = []
        for _ in range(10):  # each reserves 10 + 1000 x 2; without the refund the third is refused
            ex = await _serve(limits, _job(1000, n=2), generated=7)
            remaining.append(int(_headers(ex)["x-ratelimit-remaining-tokens"]))
        return remaining

    remaining = asyncio.run(main())
    # The reservation shows while the request runs; after each end only prompt + 7 tokens stay charged.
    assert remaining[0] <= TPM - 2010
    assert all(r >= TPM - 2010 - 9 * 17 for r in remaining)


def test_a_request_that_fails_before_generating_is_charged_its_prompt_only(limits):
    async def main() -> str:
        await _serve(limits, _job(4000), generated=None)
        return _headers(await _serve(limits, _job(1), generated=0))["x-ratelimit-remaining-tokens"]

    # 10 + 10 charged, 11 reserved for the second while it ran.
    assert int(asyncio.run(main())) >= TPM - 10 - 11


def test_a_reservation_over_the_bucket_is_capped_and_the_real_use_charged(limits):
    async def main() -> APIError:
        # Up to 10 + 4000 x 4 tokens: more than a minute's worth, admitted all the same (it reserves a full bucket)...
        first = await _serve(limits, _job(4000, n=4), generated=6000)
        assert int(_headers(first)["x-ratelimit-remaining-tokens"]) <= 5
        # ...and then it used 6010: the key owes ~1010 tokens, so the next request waits for them.
        with pytest.raises(APIError) as info:
            await _serve(limits, _job(100), generated=0)
        return info.value

    err = asyncio.run(main())
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert int(err.headers["Retry-After"]) >= (1010 + 110) * 60 // TPM - 1


def test_a_prompt_larger_than_the_bucket_is_refused_at_once(limits):
    with pytest.raises(APIError) as info:
        asyncio.run(_serve(limits, _job(1, prompt=[1] * (TPM + 1)), generated=0))
    assert info.value.status == 429 and "prompts are 5001 tokens" in info.value.message


def test_keys_settle_into_their_own_buckets(limits):
    async def main() -> str:
        await _serve(limits, _job(4000, n=4), generated=6000, key="key-a")  # key-a now owes tokens
        return _headers(await _serve(limits, _job(100), generated=0, key="key-b"))["x-ratelimit-remaining-tokens"]

    assert int(asyncio.run(main())) == TPM - 110
