"""The per-request record (`Exchange`): what the server learns about one HTTP request while serving it.

The outermost middleware (server/observe/access_log.py) opens it and, after the response's last byte, runs its
cleanups and logs it; the layers in between (keys, limits, routes) fill it in. It imports nothing of ours, so
every layer can read it without depending on the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.types import Scope

_SCOPE_KEY = "llamaserve.exchange"


@dataclass
class Exchange:
    """What the server learns about one HTTP request while serving it; logged once when it ends."""

    request_id: str
    method: str
    path: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    key_id: str | None = None
    model: str | None = None  # the model or LoRA adapter a generation request used
    reject_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt: list[str] | None = None
    output: list[str] | None = None
    finish_reasons: list[str] = field(default_factory=list)  # a generation's choices' finish reasons, as they end
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    completed: bool = False  # the response's last byte was sent
    client_gone: bool = False  # the client disconnected before that
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def set_headers(self, headers: dict[str, str]) -> None:
        """Adds `headers` to the response, in place of any set before under the same names (lower case)."""
        names = {k.encode() for k in headers}
        self.response_headers = [(k, v) for k, v in self.response_headers if k not in names]
        self.response_headers += [(k.encode(), v.encode()) for k, v in headers.items()]

    def on_end(self, *cleanups: Callable[[], None]) -> None:
        """Runs `cleanups` once the response's last byte has gone (or the request failed), last added first."""
        self.cleanups.extend(cleanups)

    def close(self) -> None:
        while self.cleanups:
            try:
                self.cleanups.pop()()
            except Exception:  # one failing cleanup must not skip the others (slots would leak)
                logging.getLogger("llamaserve").exception("request cleanup failed")


def attach(scope: Scope, exchange: Exchange) -> None:
    scope[_SCOPE_KEY] = exchange


def exchange_in(scope: Scope) -> Exchange | None:
    """The scope's exchange, or None outside the request context middleware."""
    return scope.get(_SCOPE_KEY)


def exchange_of_scope(scope: Scope) -> Exchange:
    return scope[_SCOPE_KEY]


def exchange_of(request: Request) -> Exchange:
    return request.scope[_SCOPE_KEY]
