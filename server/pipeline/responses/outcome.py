"""What becomes of a response: built from chat's result, failed by the guard, and kept in the store when its
request asked for it. Shared by the answers in full, streamed and in the background."""

from __future__ import annotations

import logging
from typing import Any

from server.errors import APIError
from server.pipeline.job import Job
from server.pipeline.render import usage as chat_usage
from server.pipeline.responses.objects import (
    ResponseDraft,
    content_filter_error,
    output_items,
    response_object,
    status_of,
    usage,
)
from server.safety.moderation import CONTENT_FILTER_RESULTS
from server.store.responses import ResponseStore, StoredResponse, StoreUnavailable

log = logging.getLogger("llamaserve.responses")


async def keep(store: ResponseStore, draft: ResponseDraft, response: dict[str, Any]) -> None:
    """Stores `response` when its request asked for it. A store that is away costs the record, not the answer."""
    if not draft.store:
        return
    try:
        await store.put(StoredResponse(draft.id, draft.owner, response, draft.input_items, draft.created_at))
    except StoreUnavailable as exc:
        log.warning("response %s not stored: %s", draft.id, exc)


async def prompt_verdict(job: Job) -> dict[str, Any] | None:
    """The guard's check of the input: None when it passes, else the failed response's error (Azure's details)."""
    if job.moderation is None:
        return None
    try:
        await job.moderation.check_prompt()
    except APIError as exc:
        if exc.code != "content_filter":
            raise
        return {**content_filter_error((exc.inner or {}).get("content_filter_result")), "message": exc.message}
    return None


def failed(job: Job, draft: ResponseDraft, error: dict[str, Any]) -> dict[str, Any]:
    return response_object(draft, "failed", [], usage(chat_usage(sum(len(p) for p in job.prompts), 0)), error)


def from_chat(draft: ResponseDraft, body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion's body (server/pipeline/respond.py `full_body`) as the response object."""
    choice = body["choices"][0]
    status, incomplete = status_of(choice["finish_reason"])
    error = content_filter_error(choice.get(CONTENT_FILTER_RESULTS)) if status == "failed" else None
    return response_object(draft, status, output_items(choice), usage(body["usage"]), error, incomplete)
