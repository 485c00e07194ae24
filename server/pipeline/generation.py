"""The request pipeline both completion APIs share, from a parsed request to a `Job` for the engine:
parse (server/pipeline/parse.py) -> prepare here: the request checked, admitted (server/protection/limits.py `RequestAdmission`), its prompt
built, through the gate of server/pipeline/validation.py -> respond (server/pipeline/respond.py), in full or as an event stream.

Chat and text completions differ only in how the prompt is built (`prepare_*`) and in their `render.Flavor`.
"""

from __future__ import annotations

import uuid

from engine.adapters import Adapter
from engine.core import LlamaEngine
from schemas import ChatCompletionRequest, CompletionRequest
from schemas.chat import template_messages
from server.pipeline import render
from server.errors import APIError
from server.pipeline.job import Job
from server.protection.limits import RequestAdmission
from server.settings import Settings
from server.pipeline.structured import structured_output
from server.pipeline.tools import plan as tools
from server.pipeline.validation import ModelFacts, check_prompt_chars, check_request, validate


def check_model(model: str | None, engine: LlamaEngine) -> Adapter | None:
    """The LoRA adapter `model` names; None for the base model."""
    if model is None or model in (engine.info.name, engine.info.path):
        return None
    adapter = engine.adapters.get(model)
    if adapter is None:
        raise APIError(404, f"The model `{model}` does not exist; this server serves `{engine.info.name}`",
                       param="model", code="model_not_found")
    return adapter


def _request_id(flavor: render.Flavor) -> str:
    return flavor.id_prefix + uuid.uuid4().hex


async def prepare_chat(req: ChatCompletionRequest, engine: LlamaEngine, settings: Settings,
                       admission: RequestAdmission) -> Job:
    """The job for a chat request; `admission` admits it once it is known to be well-formed, before its prompt is
    built."""
    adapter = check_model(req.model, engine)
    model = ModelFacts.of(engine)
    limits = settings.api_limits
    choices = check_request(req, limits, model)  # refuse what cannot run before doing work for it
    fmt = engine.info.tool_call_format if settings.tool_call_format == "auto" else settings.tool_call_format
    tool_plan = tools.resolve(req, fmt)
    messages = tools.for_template(template_messages(req.messages), fmt)
    chars = sum(len(m["content"]) for m in messages)
    check_prompt_chars(chars, limits, "messages")
    await admission.admit_prompts(chars, 0, req.max_tokens, choices.candidates)
    # No `tools` at all without tools: an empty list is not `none` to Llama 3.1's template, which would add its
    # tool-calling preamble to the prompt.
    with_tools = {"tools": tool_plan.template_tools} if tool_plan else {}
    prompt = await engine.encode_chat(messages, max_chars=settings.max_prompt_chars, **with_tools)
    admission.count_prompts(len(prompt))
    shape = await structured_output(req, tool_plan.schema if tool_plan else None, settings.grammar_timeout_s)
    gen = validate(req, limits, model, [prompt], structured_output=shape, adapter=adapter)
    flavor = render.ChatFlavor(top_k=gen.logprobs, tools=tool_plan)
    return Job(_request_id(flavor), req, flavor, [prompt], gen)


async def prepare_completion(req: CompletionRequest, engine: LlamaEngine, settings: Settings,
                             admission: RequestAdmission) -> Job:
    """The job for a completions request; `admission` admits it once it is known to be well-formed, before its prompts
    are tokenised."""
    adapter = check_model(req.model, engine)
    model = ModelFacts.of(engine)
    limits = settings.api_limits
    choices = check_request(req, limits, model)
    given = req.prompts()
    chars = sum(len(p) for p in given if isinstance(p, str))
    check_prompt_chars(chars, limits, "prompt")
    token_ids = sum(len(p) for p in given if not isinstance(p, str))
    await admission.admit_prompts(chars, token_ids, req.max_tokens, choices.candidates * len(given))
    prompts = [await engine.encode_text(p) if isinstance(p, str) else p for p in given]
    admission.count_prompts(sum(len(p) for p in prompts))
    shape = await structured_output(req, None, settings.grammar_timeout_s)
    gen = validate(req, limits, model, prompts, structured_output=shape, adapter=adapter)
    echo_texts = [p if isinstance(p, str) else engine.decode(p) for p in given] if req.echo else None
    flavor = render.CompletionFlavor(top_k=gen.logprobs)
    return Job(_request_id(flavor), req, flavor, prompts, gen, echo_texts)
