"""The vLLM engine behind the server: start-up, tokenisation, generation, abort, health.

Knows nothing about HTTP. Results leave as `engine.outputs` objects; failures as `engine.errors` exceptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from functools import partial
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMError
from vllm.inputs.engine import tokens_input
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from engine import adapters, best_of, outputs
from engine.beam_search import beam_search
from engine.errors import EngineUnavailable, InvalidGenerationRequest
from engine.sampling import GenerationPlan, beam_step_params, to_sampling_params

log = logging.getLogger("llamaserve.engine")

# Above this many characters, tokenisation moves off the event loop so other requests keep streaming.
_OFFLOAD_CHARS = 20_000


@dataclass(frozen=True)
class EngineOptions:
    model: str
    served_model_name: str
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_num_seqs: int | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None
    enforce_eager: bool = False
    distributed_executor_backend: str | None = None
    cpu_kvcache_space_gib: int | None = None
    seed: int = 0
    max_logprobs: int = 20
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    max_model_len: int
    vocab_size: int
    is_chat: bool
    provider: str


class LlamaEngine:
    def __init__(self, llm: AsyncLLM, info: ModelInfo, chat_template: str | None):
        self._llm = llm
        self.info = info
        self._tokenizer = llm.get_tokenizer()
        self._encode = _text_encoder(self._tokenizer)
        self._chat_template = chat_template
        self._eos_ids = _eos_ids(llm, self._tokenizer)
        self.adapters = adapters.AdapterSet()
        self._lora_config = llm.vllm_config.lora_config  # None: LoRA is off
        self._base_layers = adapters.BaseLayers.of(llm.model_config.hf_config)

    # --- life cycle

    @classmethod
    def start(cls, options: EngineOptions) -> LlamaEngine:
        if options.cpu_kvcache_space_gib is not None:
            # Read by vLLM's CPU backend in the engine process it spawns.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kvcache_space_gib)
        args = AsyncEngineArgs(
            model=options.model,
            served_model_name=options.served_model_name,
            dtype=options.dtype,
            max_model_len=options.max_model_len,
            tensor_parallel_size=options.tensor_parallel_size,
            pipeline_parallel_size=options.pipeline_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            quantization=options.quantization,
            kv_cache_dtype=options.kv_cache_dtype,
            max_num_seqs=options.max_num_seqs,
            trust_remote_code=options.trust_remote_code,
            enforce_eager=options.enforce_eager,
            distributed_executor_backend=options.distributed_executor_backend,
            seed=options.seed,
            max_logprobs=options.max_logprobs,
            enable_lora=options.enable_lora,
            max_loras=options.max_loras,
            max_lora_rank=options.max_lora_rank,
            max_cpu_loras=options.max_cpu_loras,
            # Sampling defaults come from the API contract, not from the checkpoint's generation_config.
            generation_config="vllm",
            **options.extra,
        )
        llm = AsyncLLM.from_engine_args(args)
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
        )
        return cls(llm, info, chat_template)

    def shutdown(self) -> None:
        self._llm.shutdown()

    @property
    def is_dead(self) -> bool:
        return self._llm.errored

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineUnavailable(str(exc) or "engine is not running") from exc

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    # --- text and tokens

    async def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > _OFFLOAD_CHARS:
            return await asyncio.to_thread(self._encode, text, add_special_tokens)
        return self._encode(text, add_special_tokens)

    async def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        def render() -> list[int]:
            try:
                text = self._tokenizer.apply_chat_template(
                    messages, chat_template=self._chat_template, add_generation_prompt=True, tokenize=False
                )
            except Exception as exc:  # template errors are the caller's conversation shape, e.g. bad role order
                raise InvalidGenerationRequest(f"messages do not fit the chat template: {exc}", "messages") from exc
            return self._encode(text, False)

        if sum(len(m["content"]) for m in messages) > _OFFLOAD_CHARS:
            return await asyncio.to_thread(render)
        return render()

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

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

    async def stream(self, prompt_ids: list[int], plan: GenerationPlan, request_id: str) -> AsyncIterator[outputs.Step]:
        """Deltas as the engine produces them; cancelling the iteration aborts the engine request."""
        params = to_sampling_params(plan, stream=True)
        prompt = outputs.PromptInfo(token_ids=prompt_ids)
        completion_tokens = 0
        async for out in self._generate(prompt_ids, params, request_id, plan.adapter):
            choices = [_choice(c, self._tokenizer) for c in out.outputs]
            completion_tokens += sum(len(c.token_ids) for c in choices)
            if out.prompt_logprobs is not None and prompt.logprobs is None:
                prompt.logprobs = _prompt_logprobs(out, self._tokenizer)
            yield outputs.Step(choices, prompt, completion_tokens, out.finished)

    async def complete(self, prompt_ids: list[int], plan: GenerationPlan, request_id: str) -> outputs.Step:
        """All choices at once; with best_of > n, the n best candidates by mean token logprob."""
        if plan.request.use_beam_search:
            return await self._beam_search(prompt_ids, plan, request_id)
        params = to_sampling_params(plan, stream=False)
        final: RequestOutput | None = None
        async for out in self._generate(prompt_ids, params, request_id, plan.adapter):
            final = out
        assert final is not None and final.finished
        choices = [_choice(c, self._tokenizer) for c in final.outputs]
        completion_tokens = sum(len(c.token_ids) for c in choices)
        if plan.num_choices > plan.request.n:
            choices = best_of.pick(choices, plan.request.n)
        prompt = outputs.PromptInfo(token_ids=prompt_ids, logprobs=_prompt_logprobs(final, self._tokenizer))
        return outputs.Step(choices, prompt, completion_tokens, finished=True)

    async def _beam_search(self, prompt_ids: list[int], plan: GenerationPlan, request_id: str) -> outputs.Step:
        req = plan.request
        stop_ids = set(req.stop_token_ids or ()) | (set() if req.ignore_eos else self._eos_ids)
        beams = await beam_search(
            partial(self._generate, adapter=plan.adapter),
            prompt_ids,
            beam_step_params(plan),
            width=plan.num_choices,
            max_tokens=plan.max_tokens,
            stop_ids=stop_ids,
            length_penalty=req.length_penalty,
            early_stopping=req.early_stopping,
            request_id=request_id,
        )
        skip_special = True if req.skip_special_tokens is None else req.skip_special_tokens
        choices = [
            outputs.ChoiceDelta(
                index=i,
                text=self.decode(b.tokens, skip_special_tokens=skip_special),
                token_ids=b.tokens,
                logprobs=None
                if plan.num_logprobs is None
                else [_token_logprob(t, alts, self._tokenizer, plan.num_logprobs) for t, alts in zip(b.tokens, b.steps)],
                finish_reason=b.finish_reason,
                cumulative_logprob=b.cum_logprob,
            )
            for i, b in enumerate(beams[: req.n])
        ]
        return outputs.Step(
            choices, outputs.PromptInfo(prompt_ids), sum(len(c.token_ids) for c in choices), finished=True
        )

    async def _generate(self, prompt_ids: list[int], params: Any, request_id: str,
                        adapter: adapters.Adapter | None = None) -> AsyncIterator[RequestOutput]:
        if self._llm.errored:
            raise EngineUnavailable("the engine is not running")
        lora = None if adapter is None else LoRARequest(adapter.name, adapter.id, adapter.path)
        try:
            async for out in self._llm.generate(tokens_input(prompt_ids), params, request_id, lora_request=lora):
                yield out
        except EngineDeadError as exc:
            raise EngineUnavailable("the engine stopped") from exc
        except (VLLMError, ValueError) as exc:
            if self._llm.errored:
                raise EngineUnavailable("the engine stopped") from exc
            raise InvalidGenerationRequest(str(exc)) from exc


def _text_encoder(tokenizer: Any) -> Callable[[str, bool], list[int]]:
    """Text -> token ids. A fast tokenizer's Rust backend gives the same ids as `tokenizer.encode` at a fraction of
    the cost: transformers wraps every call in a BatchEncoding, measured at about a tenth of the API process's CPU
    per streamed chat request. Only read-only backend calls are made, so sharing it across threads is safe."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "split_special_tokens", False):
        return lambda text, add_special_tokens: tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return lambda text, add_special_tokens: backend.encode(text, add_special_tokens=add_special_tokens).ids


def _choice(c: CompletionOutput, tokenizer: Any) -> outputs.ChoiceDelta:
    text = c.text
    if isinstance(c.stop_reason, int):
        # The contract keeps a stop_token_ids token in the text unless it is special; vLLM drops it.
        text += tokenizer.decode([c.stop_reason], skip_special_tokens=True)
    return outputs.ChoiceDelta(
        index=c.index,
        text=text,
        token_ids=list(c.token_ids),
        logprobs=None if c.logprobs is None else [_token_logprob(tid, lp, tokenizer) for tid, lp in zip(c.token_ids, c.logprobs)],
        finish_reason=c.finish_reason,
        cumulative_logprob=c.cumulative_logprob,
    )


def _token_logprob(token_id: int, candidates: dict, tokenizer: Any, k: int | None = None) -> outputs.TokenLogprob:
    chosen = candidates[token_id]
    # vLLM keeps the top k plus the sampled token; rank orders them (the sampled one may rank below k).
    ranked = sorted(candidates.items(), key=lambda item: item[1].rank or 0)
    if k is not None:  # candidates hold more than the client asked for (beam search)
        ranked = [(t, lp) for i, (t, lp) in enumerate(ranked) if i < k or t == token_id]
    return outputs.TokenLogprob(
        token=_token_text(token_id, chosen, tokenizer),
        token_id=token_id,
        logprob=chosen.logprob,
        top=[(_token_text(tid, lp, tokenizer), lp.logprob) for tid, lp in ranked],
    )


def _token_text(token_id: int, lp: Any, tokenizer: Any) -> str:
    if lp.decoded_token is not None:
        return lp.decoded_token
    return tokenizer.decode([token_id])


def _prompt_logprobs(out: RequestOutput, tokenizer: Any) -> list[outputs.TokenLogprob] | None:
    if out.prompt_logprobs is None:
        return None
    return [
        outputs.TokenLogprob(tokenizer.decode([tid]), tid, None, [])
        if candidates is None
        else _token_logprob(tid, candidates, tokenizer)
        for tid, candidates in zip(out.prompt_token_ids or [], out.prompt_logprobs)
    ]


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
