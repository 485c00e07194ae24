"""Beam-search steps on vLLM's engine: the next token's alternatives after each live beam, with as little
per-step work as the engine allows.

- A beam's request does not stop after one token: it keeps generating greedily (up to `lookahead` tokens) with
  the alternatives of each token. Most beams grow by their own most likely token, and such a beam's next step is
  then the running request's next output, computed by the engine while the front end was still choosing beams:
  no new request, no prefill, no round trip spent waiting. A running request no beam follows is aborted.
  (Greedy decoding gives the same alternatives as a fresh one-token request on the same prefix: the
  reference-equality test in tests/engine/test_beam_reference.py holds it to that.)
- New requests skip vLLM's per-request input processing: the search validates one request through the normal
  path, then each step's requests are copies of it with their own tokens and id.
- All of a step's requests are submitted before any is awaited, and results are read straight from vLLM's
  per-request output collectors, without an async generator per request.
- No branch is started before the search asks for it: starting a running request's likeliest branch a step early
  made a lone search 16-28% slower (widths 4 and 8 in-process, round five of docs/BENCHMARKS.md) and four
  searches no faster.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from vllm.exceptions import VLLMError
from vllm.inputs.engine import tokens_input
from vllm.sampling_params import SamplingParams
from vllm.v1.engine import EngineCoreRequest
from vllm.v1.engine.async_llm import AsyncLLM

from engine.errors import EngineUnavailable
from engine.failures import engine_failure

# Up to this many tokens per request: a running request no beam follows wastes at most what it ran ahead.
DEFAULT_LOOKAHEAD = 8


class _Stream:
    """One engine request: a beam's prefix and the greedy continuation the engine is producing after it."""

    __slots__ = ("request_id", "collector", "left", "pending")

    def __init__(self, request_id: str, collector: Any, tokens: int):
        self.request_id = request_id
        self.collector = collector
        self.left = tokens  # outputs not yet consumed
        self.pending: deque[tuple[int, dict[int, Any]]] = deque()

    async def next(self) -> tuple[int, dict[int, Any]]:
        """The next token the engine chose, with the alternatives at its position."""
        while not self.pending:
            out = (await self.collector.get()).outputs[0]
            if not out.token_ids or out.logprobs is None:  # aborted or failed: no alternatives
                self.left = 0
                return -1, {}
            self.pending.extend(zip(out.token_ids, out.logprobs))
        self.left -= 1
        return self.pending.popleft()


class EngineSteps:
    """A `beam_search.Step` for one search: call it with each live beam's generated tokens, `close()` at the end."""

    def __init__(self, llm: AsyncLLM, prompt_ids: list[int], params_for: Callable[[int], SamplingParams],
                 *, request_id: str, max_tokens: int, lookahead: int = DEFAULT_LOOKAHEAD,
                 lora_request: Any = None, trace_headers: Mapping[str, str] | None = None):
        self._llm = llm
        self._trace_headers = trace_headers  # every step's request joins the search's trace
        self._lora_request = lora_request  # every step runs on the request's LoRA adapter, if any
        self._prompt = prompt_ids
        self._params_for = params_for
        self._request_id = request_id
        self._max_tokens = max_tokens
        self._lookahead = max(1, lookahead)
        self._templates: dict[int, EngineCoreRequest] = {}
        self._ids = itertools.count()
        # Running requests by the generated tokens their next output follows.
        self._following: dict[tuple[int, ...], _Stream] = {}
        self._open: dict[str, _Stream] = {}  # every request not known to be finished, for close()
        # Tokens generated for the search: one per live beam per step, whichever beams survive it.
        self.generated_tokens = 0

    async def __call__(self, generated: list[list[int]]) -> list[dict[int, Any]]:
        if self._llm.errored:
            raise EngineUnavailable("the engine is not running")
        self.generated_tokens += len(generated)
        try:
            return await self._step(generated)
        except (VLLMError, ValueError) as exc:
            raise engine_failure(exc, self._llm.errored) from exc

    async def _step(self, generated: list[list[int]]) -> list[dict[int, Any]]:
        keys = [tuple(g) for g in generated]
        streams = [self._following.pop(k, None) for k in keys]
        for i, stream in enumerate(streams):
            if stream is None:
                streams[i] = await self._start(generated[i])
        # Running requests no live beam follows any more (after the new ones: they wait).
        if self._following:
            await self._abort(list(self._following.values()))
            self._following.clear()
        results = []
        for key, stream in zip(keys, streams):
            token, alternatives = await stream.next()
            if stream.left > 0:
                self._following[key + (token,)] = stream
            else:
                self._open.pop(stream.request_id, None)
            results.append(alternatives)
        return results

    async def close(self) -> None:
        """Aborts the requests still running (the search ended, failed or was cancelled)."""
        self._following.clear()
        if self._open:
            streams = list(self._open.values())
            await self._abort(streams)

    async def _start(self, generated: list[int]) -> _Stream:
        tokens = min(self._lookahead, self._max_tokens - len(generated))
        request_id = f"{self._request_id}-{next(self._ids)}"
        template = self._templates.get(tokens)
        if template is None:
            # The normal path once per length: it validates and resolves the parameters against the model.
            template = self._llm.input_processor.process_inputs(
                request_id, tokens_input(self._prompt), self._params_for(tokens),
                supported_tasks=await self._llm.get_supported_tasks(),
                **({"lora_request": self._lora_request} if self._lora_request is not None else {}),
                **({"trace_headers": self._trace_headers} if self._trace_headers is not None else {}),
            )
            self._templates[tokens] = template
        request = msgspec.structs.replace(
            template, request_id=request_id, prompt_token_ids=self._prompt + generated, arrival_time=time.time(),
        )
        stream = _Stream(request_id, await self._llm.add_request(request_id, request, request.sampling_params), tokens)
        self._open[request_id] = stream
        return stream

    async def _abort(self, streams: list[_Stream]) -> None:
        for s in streams:
            self._open.pop(s.request_id, None)
        await self._llm.abort([s.request_id for s in streams])
