"""The vLLM engine behind the server: start-up, tokenisation, generation.

Knows nothing about HTTP nor the API: it generates what an `engine.request.GenerationInput` says. Results leave as
`engine.outputs` objects; failures as `engine.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import vllm.envs
from vllm.exceptions import VLLMError
from vllm.inputs.engine import tokens_input
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.executor import Executor

from engine import adapters, best_of, engine_config, lifeline, outputs, processes, results
from engine.adapter_activity import AdapterActivity
from engine.beam_search import beam_search
from engine.beam_steps import EngineSteps
from engine.chat_encoding import ChatEncoder
from engine.errors import EngineUnavailable, InvalidGenerationRequest
from engine.failures import engine_failure
from engine.options import EngineOptions
from engine.request import GenerationInput, Mode
from engine.sampling import beam_step_params, to_sampling_params
from engine.token_bytes import TokenBytes
from engine.tool_format import detect as detect_tool_format

log = logging.getLogger("llamaserve.engine")

# How long vLLM's engine core gets to stop by itself (abort requests, stop workers) before it is killed; its
# workers die with it (engine/lifeline.py). vLLM's default of 5 s, plus its workers' own teardown, held the exit of a
# drained server for 5-7 s.
_STOP_TIMEOUT_S = 1.0
# Above this many characters (or messages), tokenisation moves off the event loop so other requests keep streaming.
_OFFLOAD_CHARS = 20_000
_OFFLOAD_MESSAGES = 256
T = TypeVar("T")
# A valid W3C context with the sampled flag off (trace and span ids are arbitrary non-zero ids).
_UNSAMPLED = {"traceparent": "00-00000000000000000000000000000001-0000000000000001-00"}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    max_model_len: int
    vocab_size: int
    is_chat: bool
    provider: str
    tool_call_format: str = "llama3_json"


class LlamaEngine:
    def __init__(self, llm: AsyncLLM, info: ModelInfo, chat_template: str | None):
        self._llm = llm
        self.info = info
        self._tokenizer = llm.get_tokenizer()
        self._encode = _text_encoder(self._tokenizer)
        self._token_bytes = TokenBytes(self._tokenizer)
        self._encode_off_loop = _text_encoder(self._tokenizer, off_loop=True)
        self._chat = ChatEncoder(self._tokenizer, chat_template)
        # Long texts are tokenised here, off the event loop; half the cores, so the loop and the engine keep theirs.
        self._tokenize_pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="tokenize")
        self._eos_ids = _eos_ids(llm, self._tokenizer)
        self.adapters = adapters.AdapterSet()
        self._lora_config = llm.vllm_config.lora_config  # None: LoRA is off
        self._base_layers = adapters.BaseLayers.of(llm.model_config.hf_config)
        self.adapter_activity = (None if self._lora_config is None
                                 else AdapterActivity(self._lora_config.max_loras, self._scheduled_per_adapter))
        self._tracing = llm.vllm_config.observability_config.otlp_traces_endpoint is not None

    # --- life cycle

    @classmethod
    def start(cls, options: EngineOptions) -> LlamaEngine:
        if options.cpu_kvcache_space_gib is not None:
            # Read by vLLM's CPU backend in the engine process it spawns.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kvcache_space_gib)
        if options.otlp_traces_endpoint is not None:
            # vLLM picks its exporters' transport from this variable (gRPC when unset), here and in its engine
            # processes.
            os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = options.otlp_traces_protocol
        args = engine_config.engine_args(options)
        lifeline.install()  # engine processes die with this one, however it ends
        # AsyncLLM.from_engine_args, split so the start method is set after the config (which resets it on CPU).
        vllm_config = engine_config.vllm_config(args)
        method = processes.apply(options.process_start_method)
        log.info("engine processes start by %s", method or "vLLM's choice")
        processes.share_heap_with_forks(method)
        llm = AsyncLLM(vllm_config=vllm_config, executor_class=Executor.get_class(vllm_config),
                       log_requests=args.enable_log_requests, log_stats=not args.disable_log_stats,
                       usage_context=engine_config.USAGE_CONTEXT)
        chat_template = Path(options.chat_template).read_text() if options.chat_template else None
        tokenizer = llm.get_tokenizer()
        model_config = llm.model_config
        info = ModelInfo(
            name=options.served_model_name,
            path=options.model,
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            is_chat=bool(chat_template or getattr(tokenizer, "chat_template", None)),
            provider=_provider(options.model, model_config.hf_config),
            tool_call_format=detect_tool_format(model_config.hf_config, chat_template or getattr(tokenizer, "chat_template", None)),
        )
        return cls(llm, info, chat_template)

    def _traced(self, trace_headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
        """The trace context vLLM's span joins. With tracing on in vLLM every request gets a span, one without a
        context a trace of its own: such requests (the warm-up, a caller that traces nothing) carry an unsampled
        context instead, so that vLLM records nothing for them."""
        if not self._tracing:
            return None
        return trace_headers or _UNSAMPLED

    def shutdown(self) -> None:
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._llm.shutdown(timeout=_STOP_TIMEOUT_S)
        except psutil.NoSuchProcess as exc:
            # vLLM's forced kill (an engine process slower than the timeout) lists the processes, then names each:
            # one that exits in between raised out of the app's shutdown, with a traceback. What is left of the
            # engine dies with this process (engine/lifeline.py).
            log.info("engine process %s exited while vLLM was ending it", exc.pid)

    @property
    def is_dead(self) -> bool:
        return self._llm.errored

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    def _scheduled_per_adapter(self) -> dict[str, int]:
        """vLLM's count of each adapter's scheduled, unfinished requests (its output processor's, from their steps)."""
        states = self._llm.output_processor.lora_states.requests
        return {name: len(stats.running) for name, stats in list(states.items())}

    # --- text and tokens

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > _OFFLOAD_CHARS:
            return await self._off_loop(self._encode_off_loop, text, add_special_tokens)
        return self._encode(text, add_special_tokens)

    async def encode_chat(self, messages: list[dict[str, Any]], max_chars: int | None = None,
                          tools: list[dict[str, Any]] | None = None) -> list[int]:
        """The chat template's prompt; message text never becomes control tokens (engine/chat_encoding.py).
        `max_chars` bounds the rendered prompt, checked before it is tokenised. `tools` go to the template."""
        large = len(messages) > _OFFLOAD_MESSAGES or sum(len(m["content"]) for m in messages) > _OFFLOAD_CHARS
        render = self._chat.render_and_scan
        text, spoofing = await self._off_loop(render, messages, tools) if large else render(messages, tools)
        if max_chars is not None and len(text) > max_chars:
            raise InvalidGenerationRequest(
                f"the rendered chat prompt holds {len(text)} characters, more than the limit of {max_chars}",
                "messages",
            )
        if len(text) <= _OFFLOAD_CHARS:
            return self._chat.encode(text, messages, spoofing, tools=tools)
        encode = functools.partial(self._encode_off_loop, add_special_tokens=False)
        return await self._off_loop(functools.partial(self._chat.encode, tools=tools), text, messages, spoofing, encode)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, fn, *args)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    async def decode_text(self, token_ids: list[int]) -> str:
        """decode() for a client's token list: a long one is decoded off the event loop (decode_batch releases
        the GIL, decode does not)."""
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if len(token_ids) <= _OFFLOAD_CHARS // 4 or backend is None:
            return self.decode(token_ids)
        return await self._off_loop(lambda: backend.decode_batch([token_ids], skip_special_tokens=False)[0])

    def check_token_ids(self, token_ids: list[int], param: str) -> None:
        bad = [t for t in token_ids if t >= self.info.vocab_size]
        if bad:
            raise InvalidGenerationRequest(
                f"token id {bad[0]} is out of the vocabulary (size {self.info.vocab_size})", param
            )

    # --- LoRA adapters: checked by engine.adapters before vLLM sees them. vLLM keeps up to max_cpu_loras of them
    # in memory and evicts the least recently used; an evicted adapter is read again from its path when used.

    async def load_adapter(self, name: str, path: str, source: str, replace: bool = False) -> adapters.Adapter:
        if self._lora_config is None:
            raise adapters.InvalidAdapter("LoRA is not enabled on this server")
        async with self.adapters.lock:
            old = self.adapters.get(name)
            if old is not None and not replace:
                raise adapters.AdapterExists(f"an adapter named {name!r} is loaded already (replace it with load_inplace)")
            rank, base = await asyncio.to_thread(
                adapters.inspect_adapter, Path(path), self._base_layers, self._lora_config.max_lora_rank
            )
            adapter = adapters.Adapter(name, old.id if old else self.adapters.new_id(), path, source, rank, base)
            try:
                # Loads it into the CPU cache now, so that a file vLLM cannot use fails here, not in a request.
                await self._llm.add_lora(LoRARequest(name, adapter.id, path, load_inplace=old is not None))
            except Exception as exc:  # vLLM raises plain ValueError/RuntimeError for adapters it cannot use
                if self._llm.errored:
                    raise EngineUnavailable("the engine stopped") from exc
                # Worker errors arrive wrapped ("Worker failed with error '...', please check the stack trace"):
                # the caller gets the reason, not a pointer into our logs.
                reason = re.search(r"failed with error '(.*)', please check", str(exc), re.DOTALL)
                raise adapters.InvalidAdapter(f"the engine refused the adapter: {reason[1] if reason else exc}") from exc
            self.adapters.put(adapter)
            return adapter

    async def unload_adapter(self, name: str) -> adapters.Adapter:
        async with self.adapters.lock:
            adapter = self.adapters.pop(name)
            try:
                await self._llm.remove_lora(adapter.id)
            except Exception as exc:
                if self._llm.errored:
                    raise EngineUnavailable("the engine stopped") from exc
                log.warning("vLLM did not drop adapter %s from its cache: %s", name, exc)
            return adapter

    # --- generation

    async def stream(self, prompt_ids: list[int], gen: GenerationInput, request_id: str) -> AsyncIterator[outputs.Step]:
        """Deltas as the engine produces them; cancelling the iteration aborts the engine request."""
        params = to_sampling_params(gen, stream=True)
        prompt = outputs.PromptInfo(token_ids=prompt_ids)
        completion_tokens = 0
        async for out in self._generate(prompt_ids, params, request_id, gen.adapter, gen.trace_headers):
            choices = [results.choice(c, self._tokenizer, self._token_bytes) for c in out.outputs]
            completion_tokens += sum(len(c.token_ids) for c in choices)
            if out.prompt_logprobs is not None and prompt.logprobs is None:
                prompt.logprobs = results.prompt_logprobs(out, self._tokenizer, self._token_bytes)
            yield outputs.Step(choices, prompt, completion_tokens, out.finished, cached_tokens=out.num_cached_tokens or 0)

    async def complete(self, prompt_ids: list[int], gen: GenerationInput, request_id: str) -> outputs.Step:
        """All choices at once; with best_of > n, the n best candidates by mean token logprob."""
        if gen.mode is Mode.beam:
            return await self._beam_search(prompt_ids, gen, request_id)
        params = to_sampling_params(gen, stream=False)
        final: RequestOutput | None = None
        async for out in self._generate(prompt_ids, params, request_id, gen.adapter, gen.trace_headers):
            final = out
        assert final is not None and final.finished
        candidates = final.outputs
        completion_tokens = sum(len(c.token_ids) for c in candidates)
        if gen.mode is Mode.best_of:
            # Ranked as the engine returned them: only the n kept become choices (their logprobs only if asked).
            candidates = best_of.pick(candidates, gen.n)
            if gen.logprobs is None:
                for c in candidates:
                    c.logprobs = None
        choices = [results.choice(c, self._tokenizer, self._token_bytes) for c in candidates]
        prompt = outputs.PromptInfo(token_ids=prompt_ids, logprobs=results.prompt_logprobs(final, self._tokenizer, self._token_bytes))
        return outputs.Step(choices, prompt, completion_tokens, finished=True, cached_tokens=final.num_cached_tokens or 0)

    async def warm_up(self) -> None:
        """One token with its logprob: the first request with logprobs (logprobs, best_of, beam search) in an
        engine process has vLLM compile its rank kernel, 1-2 s with a warm compile cache and 5-10 s or more
        without one (a fresh container)."""
        gen = GenerationInput(mode=Mode.sample, n=1, candidates=1, max_tokens=1, temperature=1.0, top_p=1.0,
                              top_k=0, min_p=0.0, presence_penalty=0.0, frequency_penalty=0.0,
                              repetition_penalty=1.0, min_tokens=0, ignore_eos=True, skip_special_tokens=True,
                              logprobs=1)
        bos = self._tokenizer.bos_token_id
        await self.complete([0 if bos is None else bos], gen, "llamaserve-warm-up")

    async def _beam_search(self, prompt_ids: list[int], gen: GenerationInput, request_id: str) -> outputs.Step:
        beam = gen.beam
        assert beam is not None
        stop_ids = set(gen.stop_token_ids) | (set() if gen.ignore_eos else self._eos_ids)
        steps = EngineSteps(self._llm, prompt_ids, lambda tokens: beam_step_params(gen, tokens),
                            request_id=request_id, max_tokens=gen.max_tokens,
                            lora_request=_lora_request(gen.adapter), trace_headers=self._traced(gen.trace_headers))
        try:
            beams = await beam_search(steps, width=beam.width, max_tokens=gen.max_tokens, stop_ids=stop_ids,
                                      length_penalty=beam.length_penalty, early_stopping=beam.early_stopping)
        finally:
            await steps.close()
        choices = [
            outputs.ChoiceDelta(
                index=i,
                text=self.decode(b.tokens, skip_special_tokens=gen.skip_special_tokens),
                token_ids=b.tokens,
                logprobs=None
                if gen.logprobs is None
                else [results.token_logprob(t, alts, self._tokenizer, self._token_bytes, gen.logprobs) for t, alts in zip(b.tokens, b.steps)],
                finish_reason=b.finish_reason,
                cumulative_logprob=b.cum_logprob,
            )
            for i, b in enumerate(beams[: gen.n])
        ]
        # Every beam's tokens were generated, as best_of's candidates are: usage and charges count them all.
        return outputs.Step(choices, outputs.PromptInfo(prompt_ids), steps.generated_tokens, finished=True)

    async def _generate(self, prompt_ids: list[int], params: Any, request_id: str,
                        adapter: adapters.Adapter | None = None,
                        trace_headers: Mapping[str, str] | None = None) -> AsyncIterator[RequestOutput]:
        if self._llm.errored:
            raise EngineUnavailable("the engine is not running")
        held = (contextlib.nullcontext() if adapter is None or self.adapter_activity is None
                else self.adapter_activity.holding(adapter.name, params.n))
        try:
            with held:
                async for out in self._llm.generate(tokens_input(prompt_ids), params, request_id,
                                                    lora_request=_lora_request(adapter),
                                                    trace_headers=self._traced(trace_headers)):
                    yield out
        except (VLLMError, ValueError) as exc:
            raise engine_failure(exc, self._llm.errored) from exc


def cache_vllm_environment() -> None:
    """vLLM reads its VLLM_* variables from the environment on every access, a few of them per generated token
    (~3% of the API process's CPU when streaming); its engine processes cache them once started, and this caches
    them in this one. Call it once every engine of the process has started: forked engine processes would
    inherit the cached values, and the start sets some of them (VLLM_CPU_KVCACHE_SPACE)."""
    vllm.envs.enable_envs_cache()


def _lora_request(adapter: adapters.Adapter | None) -> LoRARequest | None:
    return None if adapter is None else LoRARequest(adapter.name, adapter.id, adapter.path)


def _text_encoder(tokenizer: Any, off_loop: bool = False) -> Callable[[str, bool], list[int]]:
    """Text -> token ids. A fast tokenizer's Rust backend gives the same ids as `tokenizer.encode` at a fraction of
    the cost: transformers wraps every call in a BatchEncoding, measured at about a tenth of the API process's CPU
    per streamed chat request. Only read-only backend calls are made, so sharing it across threads is safe.

    `off_loop`: for a worker thread. The backend's `encode` holds the GIL throughout (a 4 MB text: ~2 s in which
    no other request is served, even from a thread); `encode_batch` gives the same ids and releases it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "split_special_tokens", False):
        return lambda text, add_special_tokens: tokenizer.encode(text, add_special_tokens=add_special_tokens)
    if off_loop:
        return lambda text, add_special_tokens: backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
    return lambda text, add_special_tokens: backend.encode(text, add_special_tokens=add_special_tokens).ids


def _eos_ids(llm: AsyncLLM, tokenizer: Any) -> set[int]:
    """Every token the model ends a turn with: the tokenizer's EOS and generation_config's (Llama 3 has several)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = llm.model_config.try_get_generation_config().get("eos_token_id")
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def _provider(model: str, hf_config: Any) -> str:
    model_type = getattr(hf_config, "model_type", "") or ""
    if model_type in ("llama", "mllama", "llama4") or "llama" in model.lower():
        return "Meta"
    return "unknown"
