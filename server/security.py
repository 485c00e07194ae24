"""API keys: `Authorization: Bearer <key>` or `api-key: <key>` on every route but the probes.

Keys are kept only as SHA-256 digests; a presented key is hashed and compared with every stored digest
(hmac.compare_digest, no early exit), so timing reveals neither the key nor which entry matched.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, error_response
from server.observability import exchange_of_scope

if TYPE_CHECKING:
    from server.state import ServerState

log = logging.getLogger("llamaserve.security")

# Probes must work for orchestrators that hold no key.
OPEN_PATHS = frozenset({"/health", "/ready"})
# Opened only by admin keys, which their routes check (server/adapters.py): API keys must not open them.
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})


def key_id(key: str) -> str:
    """A key's name in logs and rate-limit buckets: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class KeyRing:
    def __init__(self, keys: list[str]):
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in dict.fromkeys(keys))

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def matches(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode()).digest()
        found = False
        for stored in self._digests:
            found |= hmac.compare_digest(stored, digest)
        return found


def presented_keys(headers: Headers) -> list[str]:
    keys = []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    if headers.get("api-key", "").strip():
        keys.append(headers["api-key"].strip())
    return keys


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, state: ServerState, keys: KeyRing):
        self.app = app
        self.state = state
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = exchange_of_scope(scope)
        presented = presented_keys(Headers(scope=scope))
        valid = next((k for k in presented if self.keys.matches(k)), None)
        if valid is not None:
            exchange.key_id = key_id(valid)
        elif self.keys and not self._open(scope["path"]):
            exchange.reject_reason = "unauthenticated"
            message = (
                "Incorrect API key provided" if presented
                else "Missing API key: send `Authorization: Bearer <key>` or `api-key: <key>`"
            )
            err = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return path in OPEN_PATHS or path in ADMIN_PATHS or (path == "/metrics" and not self.state.settings.metrics_require_key)


def warn_if_open(keys: KeyRing) -> None:
    if not keys:
        log.warning(
            "NO API KEY IS CONFIGURED: every route is open to anyone who can reach this port. "
            "Set LLAMASERVE_API_KEYS or --api-key-file (make one with `llamaserve keygen`)."
        )
    else:
        log.info("API keys required (%d key(s) configured)", len(keys))
