"""Token limits charge what a request used: reserved at admission (a bounded estimate when the request does not
say how much it may generate), corrected to the prompt's exact count, settled when its exchange ends, and owed
as a debt when it used more than it reserved. In process, on the real Limits and Exchange (no engine: the
admission logic runs before it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from server.errors import APIError
from server.observe.exchange import Exchange
from server.protection.limits import Limits, RequestAdmission
from server.settings import Settings, load_settings

TPM = 5000
RESERVE = 256
ROOT = Path(__file__).resolve().parents[2]


def _exchange(key: str = "key-a") -> Exchange:
    return Exchange("rid", "POST", "/v1/completions", "203.0.113.7", key_id=key)


def _headers(ex: Exchange) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in ex.response_headers}


def _remaining(ex: Exchange) -> int:
    return int(_headers(ex)["x-ratelimit-remaining-tokens"])


async def _admit(limits: Limits, prompt: int, max_tokens: int | None, n: int = 1, key: str = "key-a",
                 chars: int = 0) -> tuple[RequestAdmission, Exchange]:
    """A request admitted as the routes admit one: `prompt` token ids (or `chars` of text, counted as `prompt`
    tokens once admitted), up to `max_tokens` (None: not given) for each of `n` sequences."""
    ex = _exchange(key)
    gate = limits.admission_for(ex)
    await gate.admit_prompts(chars, 0 if chars else prompt, max_tokens, n)
    gate.count_prompts(prompt)
    return gate, ex


async def _serve(limits: Limits, prompt: int, max_tokens: int | None, generated: int | None, n: int = 1,
                 key: str = "key-a") -> tuple[int, int]:
    """One request through admission to its end, having generated `generated` tokens: the tokens remaining
    while it ran, and after it was settled."""
    gate, ex = await _admit(limits, prompt, max_tokens, n, key)
    running = _remaining(ex)
    ex.completion_tokens = generated
    ex.close()  # what RequestContextMiddleware does after the last byte
    return running, _remaining(ex)


@pytest.fixture
def limits() -> Limits:
    return Limits(Settings(rate_limit_rpm=0, rate_limit_tpm=TPM, rate_limit_default_reserve_tokens=RESERVE))


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The buckets' clock, moved by hand: now[0] seconds."""
    import server.protection.rates

    now = [1000.0]
    monkeypatch.setattr(server.protection.rates.time, "monotonic", lambda: now[0])
    return now


def test_the_unused_part_of_a_reservation_comes_back_when_the_request_ends(limits, clock):
    async def main() -> list[tuple[int, int]]:
        # Each reserves 10 + 1000 x 2; without the refund the third is refused.
        return [await _serve(limits, 10, 1000, generated=7, n=2) for _ in range(10)]

    seen = asyncio.run(main())
    # The reservation shows while the request runs; after its end (the headers it is answered with) only
    # prompt + 7 tokens stay charged.
    assert seen[0] == (TPM - 2010, TPM - 17)
    assert [after for _, after in seen] == [TPM - 17 * i for i in range(1, 11)]


def test_a_request_without_max_tokens_reserves_the_default_reserve_per_sequence(limits, clock):
    async def main() -> int:
        _, ex = await _admit(limits, 10, None, n=3)
        return _remaining(ex)

    assert asyncio.run(main()) == TPM - 10 - RESERVE * 3


def test_a_key_that_used_more_than_it_reserved_pays_the_debt_before_its_next_admission(limits, clock):
    async def main() -> None:
        # No max_tokens: 10 + 256 reserved; it generated 6000 (what the rest of a long context allows).
        _, after = await _serve(limits, 10, None, generated=6000)
        assert after == 0  # below zero: a debt of 1010 tokens, shown as nothing remaining
        with pytest.raises(APIError) as refused:
            await _admit(limits, 10, 1)
        assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
        # 1010 owed + 11 for the request itself, at 5000 a minute.
        assert int(refused.value.headers["Retry-After"]) == 13
        clock[0] += 12  # 1000 tokens back: still 10 short of the debt
        with pytest.raises(APIError):
            await _admit(limits, 10, 1)
        clock[0] += 1  # the debt is paid and the request fits
        _, ex = await _admit(limits, 10, 1)
        assert _remaining(ex) == round(13 * TPM / 60) - 1010 - 11

    asyncio.run(main())


def test_a_reservation_over_the_bucket_is_capped_and_the_real_use_charged(limits, clock):
    async def main() -> APIError:
        # Up to 10 + 4000 x 4 tokens: more than a minute's worth, admitted all the same (it reserves a full bucket)...
        running, _ = await _serve(limits, 10, 4000, generated=6000, n=4)
        assert running == 0
        # ...and then it used 6010: the key owes 1010 tokens, so the next request waits for them.
        with pytest.raises(APIError) as info:
            await _serve(limits, 10, 100, generated=0)
        return info.value

    err = asyncio.run(main())
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert int(err.headers["Retry-After"]) == -(-(1010 + 110) * 60 // TPM)


def test_an_estimate_is_replaced_by_the_exact_count_once_the_prompt_is_tokenised(limits, clock):
    async def main() -> tuple[int, int, int]:
        ex = _exchange()
        gate = limits.admission_for(ex)
        await gate.admit_prompts(400, 0, 100, 1)  # 400 characters: an estimate of 100 tokens
        estimated = _remaining(ex)
        gate.count_prompts(130)
        counted = _remaining(ex)
        ex.completion_tokens = 10
        ex.close()
        return estimated, counted, _remaining(ex)

    assert asyncio.run(main()) == (TPM - 200, TPM - 230, TPM - 140)


def test_prompts_counted_larger_than_the_bucket_are_refused_and_charged(limits, clock):
    async def main() -> None:
        ex = _exchange()
        gate = limits.admission_for(ex)
        await gate.admit_prompts(4 * 1000, 0, 1, 1)  # estimated at 1000 tokens: admitted
        with pytest.raises(APIError) as info:
            gate.count_prompts(TPM + 1)
        assert info.value.status == 429 and f"prompts are {TPM + 1} tokens" in info.value.message
        ex.close()
        with pytest.raises(APIError):  # the tokenising was done: the key owes it
            await _admit(limits, 1, 1)

    asyncio.run(main())


def test_prompt_ids_larger_than_the_bucket_are_refused_at_once(limits, clock):
    with pytest.raises(APIError) as info:
        asyncio.run(_admit(limits, TPM + 1, 1))
    assert info.value.status == 429 and f"prompts are {TPM + 1} tokens" in info.value.message
    assert limits.admission.running == 0


def test_extra_tokens_charged_after_admission_are_owed_by_the_key(limits, clock):
    async def main() -> None:
        gate, ex = await _admit(limits, 10, 10)
        limits.charge_tokens(ex, 3000)  # a guard's checks, say
        assert _remaining(ex) == TPM - 20 - 3000
        ex.completion_tokens = 10
        ex.close()
        assert _remaining(ex) == TPM - 3020
        limits.charge_tokens(_exchange(), 3000)  # beyond the bucket: a debt
        with pytest.raises(APIError):
            await _admit(limits, 1, 1)

    asyncio.run(main())


def test_keys_settle_into_their_own_buckets(limits, clock):
    async def main() -> int:
        await _serve(limits, 10, 4000, generated=6000, n=4, key="key-a")  # key-a now owes tokens
        return (await _serve(limits, 10, 100, generated=0, key="key-b"))[0]

    assert asyncio.run(main()) == TPM - 110


def _chart_settings() -> Settings:
    values = yaml.safe_load((ROOT / "helm" / "llamaserve" / "values.yaml").read_text())
    return load_settings(**{**yaml.safe_load(values["preset"]), **values["settings"]})


PRESETS = sorted((ROOT / "configs" / "presets").rglob("llama-*.yaml"))


@pytest.mark.parametrize("config", ["chart", *PRESETS], ids=lambda c: c if c == "chart" else c.stem)
def test_with_the_shipped_defaults_one_key_runs_as_many_chats_as_there_are_slots(config, clean_env):
    settings = _chart_settings() if config == "chart" else load_settings(config=config)
    assert settings.rate_limit_tpm > 0 and settings.max_model_len  # the limiter is on, with a long context
    limits = Limits(settings.protection)

    async def main() -> None:
        # Chats of 800 characters (about 200 tokens with the template) without max_tokens, from one key.
        for _ in range(settings.max_concurrent_requests):
            await _admit(limits, 200, None, chars=800, key="one-key")

    asyncio.run(main())
    assert limits.admission.running == settings.max_concurrent_requests
