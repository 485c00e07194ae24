"""What the guard's verdicts do to a request, in Azure's terms.

- prompt judged unsafe in a blocking category: HTTP 400 `content_filter` (innererror as Azure OpenAI's);
- output judged unsafe: the choice ends with finish_reason `content_filter`, its text withheld, and carries
  `content_filter_results`. Streams are held back `guard_stream_interval_tokens` at a time and released only once
  checked, so a harmful stream is cut before its harmful part is sent;
- the guard could not judge the input (too long for it, a conversation it rejects, an answer that is no verdict):
  the request's doing, so it is refused as filtered content, whatever `guard_on_error` says;
- the guard service failed (down, timed out, overloaded): fail-open passes the output and ends its choices with
  finish_reason `content_filter_error` (Azure's signal that the filter did not run); fail-closed answers 503
  (or, once a stream has started, ends it with `content_filter_error`).

Checks are the requester's work: at most `guard_max_checks_per_key` of one key's run at once (the rest wait their
turn, outside the check's time limit, so one key's load never makes another's checks time out), and the tokens
each check cost are taken from the key's token limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from engine.errors import InvalidGenerationRequest
from engine.guard_format import (
    GuardReply,
    Verdict,
    VerdictError,
    blocked_codes,
    category_name,
    conversation,
    filter_results,
    parse_verdict,
    resolve_codes,
    tool_definitions,
)
from engine.outputs import ChoiceDelta, Step
from server.errors import APIError
from server.observe import tracing
from server.safety.guards import GuardRefused
from server.safety.requesters import KeySlots, Requester

if TYPE_CHECKING:
    from engine.core import LlamaEngine
    from server.safety.guards import Guard
    from server.settings import Settings

log = logging.getLogger("llamaserve.safety")

CONTENT_FILTER_RESULTS = "content_filter_results"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Key = tuple[int, int]  # (prompt index, choice index within that prompt)


@dataclass(frozen=True)
class Failure:
    """A check that gave no verdict because the guard service failed."""

    message: str


@dataclass(frozen=True)
class Refusal:
    """A check that gave no verdict because of what it was given: refused like filtered content."""

    message: str


class GuardContextTooShort(Exception):
    """The guard cannot read every conversation the model can: some would go unjudged."""


class Moderator:
    """The app's content safety: the guard, the policy read from settings, and the guard metrics."""

    def __init__(self, settings: Settings, guard: Guard, registry: CollectorRegistry):
        self._guard = guard
        self.check_prompt = settings.guard_check in ("prompt", "both")
        self.check_output = settings.guard_check in ("output", "both")
        self.interval = settings.guard_stream_interval_tokens
        self.timeout_s = settings.guard_timeout_s
        self.fail_open = settings.guard_on_error == "open"
        self._blocking = resolve_codes(settings.guard_block_categories)
        self._per_key = {key_id: resolve_codes(names) for key_id, names in settings.guard_key_categories.items()}
        self._slots = KeySlots(settings.guard_max_checks_per_key)
        self.checks = Counter(
            "llamaserve_guard_checks",
            "guard checks by stage (prompt, output) and result (safe, unsafe, refused, error)",
            ["stage", "result"], registry=registry,
        )
        self.blocks = Counter(
            "llamaserve_guard_blocks", "prompts and outputs blocked, by category", ["category"], registry=registry
        )
        self.latency = Histogram(
            "llamaserve_guard_latency_seconds", "time one guard check took, by stage", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )

    async def check_fit(self, model_context: int) -> None:
        """Refuses a guard whose context cannot hold the model's whole context plus its own template and verdict,
        which would leave long conversations unjudged."""
        fit = await self._guard.fit()
        if fit is not None and fit.context < model_context + fit.overhead:
            raise GuardContextTooShort(
                f"the guard's context ({fit.context} tokens) is shorter than the model's context ({model_context} "
                f"tokens) plus the guard's template and verdict ({fit.overhead} tokens): set guard_max_model_len to "
                f"at least {model_context + fit.overhead}, or lower max_model_len"
            )

    def for_request(self, prompts: list[list[int]], total_choices: int, engine: LlamaEngine, key_id: str | None,
                    requester: Requester, *, chat: list[dict[str, Any]] | None = None,
                    tools: list[dict[str, Any]] | None = None) -> Moderation:
        """The checks of one request (`prompts`: its prompts' token ids, `total_choices` in all; `chat`: a chat's
        messages as its template takes them, `tools` the tools it declares). The guard reads what the model
        reads: a chat with its tools and tool calls; a completion's prompt tokens as text, special tokens left out
        (one token each for the model, they would be many as spelled-out text, and would crowd the guard's
        context). `requester` holds the checks' slots and pays for them."""
        if chat is not None:
            declared = [tool_definitions(tools)] if tools else []
            histories, param = [[*declared, *chat]], "messages"
        else:
            texts = [engine.decode(p, skip_special_tokens=True) for p in prompts]
            histories, param = [[{"role": "user", "content": t}] for t in texts], "prompt"
        blocking = self._per_key.get(key_id or "", self._blocking)
        return Moderation(self, blocking, histories, param, total_choices, requester)

    async def judge(self, turns: list[dict[str, str]], stage: str, requester: Requester) -> Verdict | Failure | Refusal:
        with tracing.span("guard", {"llamaserve.guard.stage": stage}):
            async with self._slots.hold(requester.identity):  # the wait is the requester's own load: untimed
                started = time.perf_counter()
                verdict = await self._verdict(turns, requester)
                self.latency.labels(stage).observe(time.perf_counter() - started)
            result = _result(verdict)
            judged = isinstance(verdict, Verdict)
            tracing.annotate({"llamaserve.guard.verdict": result,
                              "llamaserve.guard.categories": list(verdict.codes) if judged else None,
                              "llamaserve.guard.reason": None if judged else verdict.message})
        self.checks.labels(stage, result).inc()
        return verdict

    async def _verdict(self, turns: list[dict[str, str]], requester: Requester) -> Verdict | Failure | Refusal:
        try:
            reply: GuardReply = await asyncio.wait_for(self._guard.classify(turns), self.timeout_s)
        except TimeoutError:
            return Failure(f"the guard gave no verdict within {self.timeout_s:g} s")
        except (GuardRefused, InvalidGenerationRequest) as exc:
            return Refusal(f"the guard could not judge it: {exc}")
        except Exception as exc:  # noqa: BLE001 - a failed check is content_filter_error or 503, never a 500
            log.warning("guard check failed: %s: %s", type(exc).__name__, exc)
            return Failure(f"the guard failed: {exc}" if str(exc) else f"the guard failed ({type(exc).__name__})")
        requester.charge(reply.tokens)
        try:
            return parse_verdict(reply.text)
        except VerdictError as exc:  # the input steered the guard off its format: not judged, so not passed
            return Refusal(f"the guard gave no verdict on it: {exc}")

    def blocked(self, verdict: Verdict, blocking: frozenset[str]) -> list[str]:
        codes = blocked_codes(verdict, blocking)
        for name in sorted({category_name(c) for c in codes}):
            self.blocks.labels(name).inc()
        return codes

    def unavailable(self, failure: Failure) -> APIError:
        return APIError(503, f"the content safety check failed: {failure.message}", code="content_filter_error",
                        headers={"Retry-After": "5"})

    async def close(self) -> None:
        await self._guard.close()


def _result(verdict: Verdict | Failure | Refusal) -> str:
    if isinstance(verdict, Verdict):
        return "safe" if verdict.safe else "unsafe"
    return "refused" if isinstance(verdict, Refusal) else "error"


def annotate(rendered: dict[str, Any], step: Step, index: int) -> dict[str, Any]:
    """Adds the content_filter_results moderation attached to choice `index` of `step`, if any."""
    results = step.extra.get(CONTENT_FILTER_RESULTS) if step.extra else None
    if results and index in results:
        rendered[CONTENT_FILTER_RESULTS] = results[index]
    return rendered


def _attach(step: Step, index: int, results: dict[str, Any]) -> None:
    step.extra.setdefault(CONTENT_FILTER_RESULTS, {})[index] = results


def _error_results(failure: Failure) -> dict[str, Any]:
    return {"error": {"code": "content_filter_error", "message": failure.message}}


def _refusal_results(refusal: Refusal) -> dict[str, Any]:
    return {"error": {"code": "content_filter_refused", "message": refusal.message}}


class Moderation:
    """One request's checks: the prompt before generation, the output after (or, streamed, as it goes)."""

    def __init__(self, moderator: Moderator, blocking: frozenset[str], histories: list[list[dict[str, Any]]],
                 param: str, total_choices: int, requester: Requester):
        self._m = moderator
        self._requester = requester
        self._blocking = blocking
        self._histories = histories
        self._param = param
        self._total = total_choices
        self._failure: Failure | None = None  # a failed check in fail-open mode: choices end content_filter_error

    async def check_prompt(self) -> None:
        if not self._m.check_prompt:
            return
        verdicts = await asyncio.gather(
            *(self._m.judge(conversation(h), "prompt", self._requester) for h in self._histories)
        )
        for v in verdicts:
            if isinstance(v, Refusal):
                raise APIError(
                    400,
                    f"The prompt was filtered by the content safety policy: {v.message}. "
                    "Please modify your prompt and retry.",
                    param=self._param,
                    code="content_filter",
                    inner={"code": "ResponsibleAIPolicyViolation", "content_filter_result": _refusal_results(v)},
                )
            if isinstance(v, Verdict) and (codes := self._m.blocked(v, self._blocking)):
                names = ", ".join(sorted({category_name(c) for c in codes}))
                raise APIError(
                    400,
                    f"The prompt was filtered by the content safety policy (Llama Guard 3 found: {names}). "
                    "Please modify your prompt and retry.",
                    param=self._param,
                    code="content_filter",
                    inner={"code": "ResponsibleAIPolicyViolation",
                           "content_filter_result": filter_results(v, self._blocking)},
                )
        self._note_failures(verdicts)

    def _note_failures(self, verdicts: list[Verdict | Failure | Refusal]) -> None:
        failure = next((v for v in verdicts if isinstance(v, Failure)), None)
        if failure is not None:
            if not self._m.fail_open:
                raise self._m.unavailable(failure)
            self._failure = failure

    async def full(self, steps: list[Step]) -> None:
        """Checks every finished choice; a blocked one loses its text and ends with content_filter."""
        targets = [(p, step, c) for p, step in enumerate(steps) for c in step.choices]
        if self._m.check_output:
            verdicts = await asyncio.gather(*(
                self._m.judge(conversation(self._histories[p], c.text), "output", self._requester)
                for p, _, c in targets
            ))
            self._note_failures(verdicts)
            for (_, step, c), v in zip(targets, verdicts):
                if results := self._blocking_results(v):
                    c.text, c.token_ids, c.finish_reason = "", [], "content_filter"
                    c.logprobs = [] if c.logprobs is not None else None
                    _attach(step, c.index, results)
        if self._failure is not None:
            for _, step, c in targets:
                if c.finish_reason != "content_filter":
                    c.finish_reason = "content_filter_error"
                    _attach(step, c.index, _error_results(self._failure))

    def _blocking_results(self, verdict: Verdict | Failure | Refusal) -> dict[str, Any] | None:
        """The content_filter_results of an output this verdict blocks; None when it does not block."""
        if isinstance(verdict, Refusal):
            return _refusal_results(verdict)
        if isinstance(verdict, Verdict) and self._m.blocked(verdict, self._blocking):
            return filter_results(verdict, self._blocking)
        return None

    def stream(self, steps: AsyncIterator[tuple[int, Step]]) -> AsyncIterator[tuple[int, Step]]:
        if not self._m.check_output and self._failure is None:
            return steps  # prompt-only checks cost the stream nothing
        return self._moderated(steps)

    async def _moderated(self, steps: AsyncIterator[tuple[int, Step]]) -> AsyncIterator[tuple[int, Step]]:
        texts: dict[Key, list[str]] = {}
        pending: dict[Key, int] = {}  # tokens not yet checked, per choice
        cut: set[Key] = set()
        finished: set[Key] = set()
        held: list[tuple[int, Step]] = []
        tokens: dict[int, int] = {}  # completion tokens so far, per prompt
        checking = self._m.check_output
        try:
            async for p_idx, step in steps:
                tokens[p_idx] = step.completion_tokens
                step.choices = [c for c in step.choices if (p_idx, c.index) not in cut]
                due = False
                for c in step.choices:
                    key = (p_idx, c.index)
                    texts.setdefault(key, []).append(c.text)
                    pending[key] = pending.get(key, 0) + max(len(c.token_ids), 1 if c.text else 0)
                    due |= c.finish_reason is not None or pending[key] >= self._m.interval
                held.append((p_idx, step))
                if checking and due:
                    checking = await self._check_held(held, texts, pending, cut, finished, tokens)
                if checking and not due:
                    continue  # hold the frames until the next check
                for item in self._release(held, finished):
                    yield item
                held.clear()
                if len(finished | cut) == self._total:
                    return
            if held:  # an engine stream that ended without a finish reason: its last text still gets checked
                if checking:
                    await self._check_held(held, texts, pending, cut, finished, tokens)
                for item in self._release(held, finished):
                    yield item
        finally:
            await steps.aclose()  # aborts the engine request when a cut ends the stream early

    async def _check_held(self, held: list[tuple[int, Step]], texts: dict[Key, list[str]], pending: dict[Key, int],
                          cut: set[Key], finished: set[Key], tokens: dict[int, int]) -> bool:
        """Checks every choice with unchecked text; cuts the unsafe ones. False: stop checking (fail-open)."""
        keys = [k for k, count in pending.items() if count and k not in cut]
        verdicts = await asyncio.gather(
            *(self._m.judge(conversation(self._histories[p], "".join(texts[(p, i)])), "output",
                           self._requester) for p, i in keys)
        )
        for key in keys:
            pending[key] = 0
        failure = next((v for v in verdicts if isinstance(v, Failure)), None)
        stopping: dict[Key, tuple[str, dict[str, Any]]] = {}
        for key, v in zip(keys, verdicts):
            if results := self._blocking_results(v):
                stopping[key] = ("content_filter", results)
        if failure is not None and not self._m.fail_open:
            for key in pending.keys() - finished:  # nothing unchecked goes out: every open choice ends here
                stopping.setdefault(key, ("content_filter_error", _error_results(failure)))
        for key, (reason, results) in stopping.items():
            if key in cut:
                continue
            cut.add(key)
            p_idx, index = key
            for p, step in held:
                if p == p_idx:
                    step.choices = [c for c in step.choices if c.index != index]
            last = Step([ChoiceDelta(index, "", [], None, reason)], held[-1][1].prompt, tokens.get(p_idx, 0))
            _attach(last, index, results)
            held.append((p_idx, last))
        if failure is not None and self._m.fail_open:
            self._failure = failure
            return False
        return True

    def _release(self, held: list[tuple[int, Step]], finished: set[Key]) -> list[tuple[int, Step]]:
        out = []
        for p_idx, step in held:
            for c in step.choices:
                if c.finish_reason is None:
                    continue
                finished.add((p_idx, c.index))
                if self._failure is not None and c.finish_reason not in ("content_filter", "content_filter_error"):
                    c.finish_reason = "content_filter_error"
                    _attach(step, c.index, _error_results(self._failure))
            if step.choices:
                out.append((p_idx, step))
        return out
