"""The gate of a Responses request: the earlier response it continues is looked up, its input items become chat
messages (server/pipeline/responses/items.py), and the chat gate (server/pipeline/generation.py `prepare_chat`)
makes the Job, with chat's rules, tools plan, structured output, admission and adapters. Only the names differ: a
refusal names the Responses parameter (`max_output_tokens`, `input`, `text`), not chat's.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from engine.core import LlamaEngine
from schemas import ChatCompletionRequest
from schemas.responses import ResponsesRequest
from server.errors import APIError, InvalidInput, from_pydantic
from server.pipeline.generation import prepare_chat
from server.pipeline.job import Job
from server.pipeline.responses import items as conversion
from server.pipeline.responses.objects import ResponseDraft, new_id
from server.pipeline.validation import check_prompt_chars
from server.protection.limits import RequestAdmission
from server.settings import Settings
from server.store.responses import ResponseStore, StoredResponse, StoreUnavailable

# chat's parameter -> the Responses parameter that set it
_PARAMS = {"max_tokens": "max_output_tokens", "messages": "input", "response_format": "text", "logprobs": "top_logprobs"}


def store_unavailable(exc: StoreUnavailable) -> APIError:
    return APIError(503, f"the response store is not available: {exc}", code="store_unavailable",
                    headers={"Retry-After": "1"})


def not_found(response_id: str, param: str | None = None) -> APIError:
    code = "previous_response_not_found" if param else "not_found"
    return APIError(404, f"no response with id {response_id!r} found", param=param, code=code)


async def load(store: ResponseStore, owner: str | None, response_id: str,
               param: str | None = None) -> StoredResponse:
    """`owner`'s stored response, or the 404 (the 503 when the store is away) saying why not."""
    try:
        record = await store.get(owner, response_id)
    except StoreUnavailable as exc:
        raise store_unavailable(exc) from exc
    if record is None:
        raise not_found(response_id, param)
    return record


async def prepare_response(req: ResponsesRequest, engine: LlamaEngine, settings: Settings,
                           admission: RequestAdmission, caller: str | None, store: ResponseStore) -> Job:
    """The job for a Responses request from the key `caller`, its draft response (`job.response`) holding what
    the response echoes and the whole input the model sees."""
    history_items: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        record = await load(store, caller, req.previous_response_id, "previous_response_id")
        history_items = [*record.input_items, *record.response["output"]]
    history = conversion.replayed(history_items) if history_items else []
    new = req.items()
    conversion.check_new_items(history, new)
    everything = [*history, *new]
    check_prompt_chars(conversion.text_chars(req.instructions, everything), settings.api_limits, "input")
    messages = conversion.chat_messages(req.instructions, everything, len(history))
    try:
        job = await prepare_chat(_chat_request(req, messages), engine, settings, admission, caller,
                                 truncate=req.truncation == "auto")
    except InvalidInput as exc:
        if exc.param not in _PARAMS:
            raise
        param = _PARAMS[exc.param]
        raise type(exc)(exc.message.replace(exc.param, param), param, exc.code) from None
    draft = ResponseDraft(
        id=new_id("resp_"), model=job.model_name or engine.info.name, owner=caller,
        input_items=[*history_items, *(conversion.stored(i) for i in new)], echoed=_echoed(req),
        store=req.store, background=req.background, logprobs=req.wants_logprobs(),
    )
    job.request_id = draft.id
    job.response = draft
    return job


def _chat_request(req: ResponsesRequest, messages: list) -> ChatCompletionRequest:
    fmt = req.text.format if req.text is not None else None
    response_format = None
    if fmt is not None:
        response_format = {"type": fmt.type}
        if fmt.type == "json_schema":
            response_format["json_schema"] = {"name": fmt.name, "schema": fmt.json_schema, "strict": fmt.strict,
                                              "description": fmt.description}
    tool_choice: Any = req.tool_choice
    if tool_choice is not None and not isinstance(tool_choice, str):
        tool_choice = {"type": "function", "function": {"name": tool_choice.name}}
    if req.tools and tool_choice not in (None, "auto", "none"):
        # A forced call is the whole output, so a text format has nothing to shape (agents send both); chat,
        # whose answer would be that text, refuses the pair.
        response_format = None
    fields: dict[str, Any] = {
        "model": req.model, "messages": messages, "stream": req.stream and not req.background,
        "max_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "user": req.user, "seed": req.seed, "stop": req.stop, "top_k": req.top_k, "min_p": req.min_p,
        "repetition_penalty": req.repetition_penalty, "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty, "ignore_eos": req.ignore_eos,
        "response_format": response_format,
        "tools": [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                  for t in req.tools] if req.tools else None,
        "tool_choice": tool_choice, "parallel_tool_calls": req.parallel_tool_calls,
        "logprobs": True if req.wants_logprobs() else None, "top_logprobs": req.top_logprobs,
    }
    try:
        chat = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None},
                                                    strict=False)
    except ValidationError as exc:
        raise from_pydantic(exc) from exc
    chat.__pydantic_extra__ = req.extra_fields()  # the pass-through fields, checked by the parser already
    return chat


def _echoed(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text is not None else None
    tool_choice = req.tool_choice if req.tool_choice is not None else "auto"
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "tool_choice": tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
        "tools": [t.model_dump() for t in req.tools or ()],
        "text": {"format": fmt.model_dump(by_alias=True) if fmt is not None else {"type": "text"},
                 "verbosity": (req.text.verbosity if req.text is not None else None) or "medium"},
        "truncation": req.truncation,
        "user": req.user,
        "safety_identifier": req.safety_identifier,
        "prompt_cache_key": req.prompt_cache_key,
        "top_logprobs": req.top_logprobs or 0,
    }
