"""The local guard: a Llama Guard model on a second vLLM engine in this process (its own engine core process,
its own share of GPU memory, or its own KV space on CPU).

It renders a conversation with the guard model's own chat template (Llama Guard 3's) and decodes the verdict
greedily; parsing the verdict is engine/guard_format.py's job, deciding what it means is the server's.
"""

from __future__ import annotations

import dataclasses
import uuid

from vllm.sampling_params import RequestOutputKind, SamplingParams

from engine.core import EngineOptions, LlamaEngine
from engine.errors import InvalidGenerationRequest
from engine.guard_format import GuardFit, GuardReply, conversation

# `unsafe` plus a line of categories fits in this many tokens even when all fourteen are named.
VERDICT_MAX_TOKENS = 48


class GuardEngine(LlamaEngine):
    @classmethod
    def start_guard(cls, options: EngineOptions) -> GuardEngine:
        # Its metrics would double vllm:* series of the main engine in this process's registry.
        return cls.start(dataclasses.replace(options, disable_log_stats=True))

    async def classify(self, turns: list[dict[str, str]]) -> GuardReply:
        """The guard's raw answer for alternating user/assistant `turns` (engine.guard_format.conversation).
        A conversation too long for the guard's context is the request's doing: InvalidGenerationRequest."""
        prompt = await self.encode_chat(turns)
        if len(prompt) + VERDICT_MAX_TOKENS > self.info.max_model_len:
            raise InvalidGenerationRequest(
                f"the guard's prompt is {len(prompt)} tokens; with its verdict that is more than the guard's "
                f"context of {self.info.max_model_len} tokens"
            )
        params = SamplingParams(
            temperature=0.0, max_tokens=VERDICT_MAX_TOKENS, output_kind=RequestOutputKind.FINAL_ONLY
        )
        text, generated = "", 0
        async for out in self._generate(prompt, params, f"guard-{uuid.uuid4().hex}"):
            text, generated = out.outputs[0].text, len(out.outputs[0].token_ids)
        return GuardReply(text, len(prompt) + generated)

    async def fit(self) -> GuardFit:
        """The guard's context, and what its template (around an empty conversation) and verdict take of it."""
        template = await self.encode_chat(conversation([{"role": "user", "content": ""}]))
        return GuardFit(self.info.max_model_len, len(template) + VERDICT_MAX_TOKENS)

    async def close(self) -> None:
        self.shutdown()
