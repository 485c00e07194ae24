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

# `unsafe` plus a line of categories fits in this many tokens even when all fourteen are named.
VERDICT_MAX_TOKENS = 48


class GuardEngine(LlamaEngine):
    @classmethod
    def start_guard(cls, options: EngineOptions) -> GuardEngine:
        # Its metrics would double vllm:* series of the main engine in this process's registry.
        return cls.start(dataclasses.replace(options, disable_log_stats=True))

    async def classify(self, turns: list[dict[str, str]]) -> str:
        """The guard's raw answer for alternating user/assistant `turns` (engine.guard_format.conversation)."""
        prompt = await self.encode_chat(turns)
        params = SamplingParams(
            temperature=0.0, max_tokens=VERDICT_MAX_TOKENS, output_kind=RequestOutputKind.FINAL_ONLY
        )
        text = ""
        async for out in self._generate(prompt, params, f"guard-{uuid.uuid4().hex}"):
            text = out.outputs[0].text
        return text

    async def close(self) -> None:
        self.shutdown()
