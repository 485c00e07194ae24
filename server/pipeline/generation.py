"""The gate: one call from a parsed request to the `Job` every later stage reads, for chat and text completions.

parse (server/pipeline/parse.py) -> the gate here -> respond (server/pipeline/respond.py), in full or as a stream.
The gate resolves the model and the caller's access to it once (server/models/adapters.py), runs every rule once
(server/pipeline/validation.py, the tools' rules in server/pipeline/tools/plan.py; each refusal an `InvalidInput`),
has the request admitted (server/protection/limits.py `RequestAdmission`: its rate limits and a slot) before any
work is done for its prompt, builds and counts the prompt, and puts in the Job all that respond, the guard, the
limits and the metrics need, so that none of them reads the wire model.

Chat and text completions differ only in how the prompt is built and in their `render.Flavor`.
"""

from __future__ import annotations

import uuid

from engine.core import LlamaEngine
from schemas import ChatCompletionRequest, CompletionRequest, GenerationRequest
from schemas.chat import template_messages
from server.models import adapters
from server.observe import tracing
from server.pipeline import render
from server.pipeline.job import Job
from server.pipeline.structured import structured_output
from server.pipeline.tools import plan as tools
from server.pipeline.truncation import drop_oldest_turns
from server.pipeline.validation import ModelFacts, check_prompt_chars, check_request, validate
from server.protection.limits import RequestAdmission
from server.settings import Settings


def _request_id(flavor: render.Flavor) -> str:
    return flavor.id_prefix + uuid.uuid4().hex


def _stream_fields(req: GenerationRequest) -> dict:
    options = req.stream_options
    return {"stream": req.stream, "usage_at_end": options is None or options.include_usage,
            "usage_in_every_chunk": options is not None and options.continuous_usage_stats}


async def prepare_chat(req: ChatCompletionRequest, engine: LlamaEngine, settings: Settings,
                       admission: RequestAdmission, caller: str | None = None, truncate: bool = False) -> Job:
    """The job for a chat request from the key `caller` (its key id; None without keys); `admission` admits it once
    it is known to be well-formed, before its prompt is built. `truncate`: a conversation too long for the context
    loses its oldest turns (server/pipeline/truncation.py) instead of being refused."""
    adapter = adapters.resolve(settings, caller, req.model, engine)
    model = ModelFacts.of(engine)
    limits = settings.api_limits
    choices = check_request(req, limits, model)  # refuse what cannot run before doing work for it
    fmt = engine.info.tool_call_format if settings.tool_call_format == "auto" else settings.tool_call_format
    tool_plan = tools.resolve(req, fmt)
    chat = template_messages(req.messages)
    messages = tools.for_template(chat, fmt)
    chars = sum(len(m["content"]) for m in messages)
    check_prompt_chars(chars, limits, "messages")
    with tracing.span("admission"):
        await admission.admit_prompts(chars, 0, req.max_tokens, choices.candidates)
    # No `tools` at all without tools: an empty list is not `none` to Llama 3.1's template, which would add its
    # tool-calling preamble to the prompt.
    with_tools = {"tools": tool_plan.template_tools} if tool_plan else {}
    with tracing.span("template", {"llamaserve.messages": len(messages)}):
        prompt = await engine.encode_chat(messages, max_chars=settings.max_prompt_chars, **with_tools)
    if truncate:
        async def encode(kept: list) -> list[int]:
            return await engine.encode_chat(tools.for_template(kept, fmt), max_chars=settings.max_prompt_chars,
                                            **with_tools)

        chat, prompt = await drop_oldest_turns(chat, prompt, encode, req.max_tokens or 1, model.context_length)
    admission.count_prompts(len(prompt))
    shape = await structured_output(req, tool_plan.schema if tool_plan else None, settings.grammar_timeout_s)
    gen = validate(req, limits, model, [prompt], structured_output=shape, adapter=adapter, choices=choices)
    flavor = render.ChatFlavor(top_k=gen.logprobs, tools=tool_plan)
    declared = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    return Job(_request_id(flavor), flavor, [prompt], gen, **_stream_fields(req), template_messages=chat,
               declared_tools=declared)


async def prepare_completion(req: CompletionRequest, engine: LlamaEngine, settings: Settings,
                             admission: RequestAdmission, caller: str | None = None) -> Job:
    """The job for a completions request from the key `caller`; `admission` admits it once it is known to be
    well-formed, before its prompts are tokenised."""
    adapter = adapters.resolve(settings, caller, req.model, engine)
    model = ModelFacts.of(engine)
    limits = settings.api_limits
    choices = check_request(req, limits, model)
    given = req.prompts()
    chars = sum(len(p) for p in given if isinstance(p, str))
    check_prompt_chars(chars, limits, "prompt")
    token_ids = sum(len(p) for p in given if not isinstance(p, str))
    with tracing.span("admission"):
        await admission.admit_prompts(chars, token_ids, req.max_tokens, choices.candidates * len(given))
    with tracing.span("tokenize", {"llamaserve.prompts": len(given)}):
        prompts = [await engine.encode_text(p) if isinstance(p, str) else p for p in given]
    admission.count_prompts(sum(len(p) for p in prompts))
    shape = await structured_output(req, None, settings.grammar_timeout_s)
    gen = validate(req, limits, model, prompts, structured_output=shape, adapter=adapter, choices=choices)
    echo_texts = [p if isinstance(p, str) else engine.decode(p) for p in given] if req.echo else None
    flavor = render.CompletionFlavor(top_k=gen.logprobs)
    return Job(_request_id(flavor), flavor, prompts, gen, **_stream_fields(req), echo_texts=echo_texts)
