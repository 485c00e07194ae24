"""Whose fault a vLLM failure is, in engine/errors.py's terms: the one mapping for every path that calls vLLM."""

from __future__ import annotations

import logging

from vllm.exceptions import GracefulHTTPError, VLLMClientError
from vllm.v1.engine.exceptions import EngineDeadError

from engine.errors import EngineFailure, EngineUnavailable, InvalidGenerationRequest

log = logging.getLogger("llamaserve.engine")


def engine_failure(exc: Exception, engine_errored: bool) -> Exception:
    """Whose fault a vLLM failure is: the caller's (a request vLLM refuses as invalid) or the server's (the engine
    failed on it, or is full): only the first is a 4xx."""
    if engine_errored or isinstance(exc, EngineDeadError):
        return EngineUnavailable("the engine stopped")
    if isinstance(exc, GracefulHTTPError):  # vLLM's own admission control: its queue is full
        return EngineFailure(exc.message or "the engine is busy; retry shortly", busy=True)
    if isinstance(exc, (VLLMClientError, ValueError)):
        return InvalidGenerationRequest(str(exc) or "the engine refused the request")
    # EngineGenerateError and the rest: vLLM says nothing the caller could act on; the cause goes to the log.
    cause = exc.__cause__
    log.error("the engine failed on a request: %r (cause: %r)", exc, cause)
    return EngineFailure("the engine failed to process the request")
