"""API keys: `Authorization: Bearer <key>` or `api-key: <key>` on every route but the probes.

The start fails closed: keys asked for of which none results refuse to start (`load_keyring`), and so does no
key at all unless `allow_unauthenticated` says so (`require_keys_or_consent`, checked by `llamaserve serve`).

Keys are kept only as SHA-256 digests; a presented key is hashed and compared with every stored digest
(hmac.compare_digest, no early exit), so timing reveals neither the key nor which entry matched.

The key file is re-read when it changes (`KeySource`): a mounted Kubernetes Secret is updated in place, so a
rotation needs no restart. A changed file that holds no key or cannot be read keeps the keys in force: a broken
rotation must not open the server.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import APIError, error_response
from server.observe.exchange import exchange_of_scope
from server.settings import key_file_lines

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("llamaserve.security")

# Probes must work for orchestrators that hold no key; the playground page asks for the key itself.
OPEN_PATHS = frozenset({"/health", "/ready", "/", "/playground"})
# Opened only by admin keys, which their routes check (server/models/adapters.py): API keys must not open them.
ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
# Read-only routes that take an admin key as well as an API key, and show an admin more: adapters' paths on
# /v1/models, the series that name adapters on /metrics (with metrics_require_key).
ADMIN_READABLE_PATHS = frozenset({"/metrics", "/v1/models"})
# The access log's and the routes' key_id of a request made with an admin key.
ADMIN_KEY_PREFIX = "admin:"


def is_admin(caller: str | None) -> bool:
    return caller is not None and caller.startswith(ADMIN_KEY_PREFIX)


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


# How often a request may look at the key file's status: a rotation takes effect within this, and a busy server
# makes one stat() call a second rather than one a request.
KEY_FILE_CHECK_INTERVAL_S = 1.0


class KeySource:
    """The keys in force: the settings' own keys plus those of the key file, read again once the file changes
    (its inode, size or modification time: a mounted Secret is swapped in by a symlink, a hand edit rewrites it)."""

    def __init__(self, fixed: list[str], path: Path | None, check_interval_s: float = KEY_FILE_CHECK_INTERVAL_S):
        self._fixed = fixed
        self._path = path
        self._interval = check_interval_s
        self._stamp = self._file_stamp()  # before the read: a change in between is read again, never missed
        self._file_keys = key_file_lines(path.read_bytes()) if path is not None else []
        self._next_check = time.monotonic() + check_interval_s
        self._ring = KeyRing(self._fixed + self._file_keys)

    def current(self) -> KeyRing:
        if self._path is not None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self._interval
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
        return self._ring

    def _file_stamp(self) -> tuple[int, int, int, int] | None:
        if self._path is None:
            return None
        try:
            st = os.stat(self._path)  # follows the Secret volume's symlinks to the current version
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _reload(self) -> None:
        shown = _shown(self._path)
        try:
            keys = key_file_lines(Path(self._path).read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("api_key_file %s changed but cannot be read (%s): keeping the keys in force", shown,
                        getattr(exc, "strerror", None) or exc)
            return
        if not keys:
            log.warning("api_key_file %s changed but holds no key: keeping the keys in force", shown)
            return
        self._file_keys = keys
        self._ring = KeyRing(self._fixed + keys)
        log.info("api_key_file %s re-read: %d key(s) in force", shown, len(self._ring))


def presented_keys(headers: Headers) -> list[str]:
    keys = []
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        keys.append(token.strip())
    if headers.get("api-key", "").strip():
        keys.append(headers["api-key"].strip())
    return keys


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: KeySource, metrics_require_key: bool, admin_keys: KeyRing | None = None):
        self.app = app
        self.keys = keys
        self.metrics_require_key = metrics_require_key
        self.admin_keys = admin_keys or KeyRing([])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = exchange_of_scope(scope)
        presented = presented_keys(Headers(scope=scope))
        keys = self.keys.current()
        valid = next((k for k in presented if keys.matches(k)), None)
        admin = None
        if valid is None and scope["path"] in ADMIN_READABLE_PATHS:
            admin = next((k for k in presented if self.admin_keys.matches(k)), None)
        if valid is not None:
            exchange.key_id = key_id(valid)
        elif admin is not None:
            exchange.key_id = ADMIN_KEY_PREFIX + key_id(admin)
        elif keys and not self._open(scope["path"]):
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
        if path in OPEN_PATHS or path in ADMIN_PATHS or path.startswith("/playground/"):
            return True
        return path == "/metrics" and not self.metrics_require_key


class AuthSettingsError(ValueError):
    """Why the server must not start with these key settings; the message never holds a key."""


def load_keyring(settings: Settings) -> KeyRing:
    """The keys of every source. Keys asked for (`api_keys` given in any source, or `api_key_file` set) of
    which none results, e.g. an empty secret, stop the start: the operator meant the server to be closed."""
    path = _shown(settings.api_key_file)
    try:
        keys = settings.all_api_keys()
    except OSError as exc:  # a missing secret must stop the start, not open the server
        raise AuthSettingsError(f"cannot read api_key_file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise AuthSettingsError(f"api_key_file {path}: {exc}") from None
    if settings.keys_requested() and not keys:
        sources = [name for name, given in (
            ("api_keys (--api-keys / LLAMASERVE_API_KEYS / YAML)", "api_keys" in settings.model_fields_set),
            (f"api_key_file {path}", settings.api_key_file is not None),
        ) if given]
        raise AuthSettingsError(
            f"API keys were configured but none is set: {' and '.join(sources)} hold(s) no key (empty or blank "
            "value, or only comments). Refusing to start with every route open; fix the secret, or drop the "
            "setting and pass --allow-unauthenticated to serve without keys on purpose."
        )
    return KeyRing(keys)


def load_key_source(settings: Settings) -> KeySource:
    """`load_keyring`'s checks, then the keys as a source that follows the key file."""
    load_keyring(settings)
    return KeySource([k.get_secret_value() for k in settings.api_keys], settings.api_key_file)


def _shown(path: object) -> str:
    """A key pasted into the file setting by mistake must not reach the log: a bare word is not shown."""
    return str(path) if "/" in str(path) else "(a name without a directory, not shown)"


def require_keys_or_consent(settings: Settings, keys: KeyRing) -> None:
    """`llamaserve serve` without any key serves only if told to: an unset or misspelt variable must not
    open every route."""
    if not keys and not settings.allow_unauthenticated:
        raise AuthSettingsError(
            "no API key is configured: set --api-keys / LLAMASERVE_API_KEYS or --api-key-file (make a key with "
            "`llamaserve keygen`), or pass --allow-unauthenticated (LLAMASERVE_ALLOW_UNAUTHENTICATED=true) to "
            "serve every route to anyone who can reach this port."
        )


def warn_if_open(keys: KeyRing) -> None:
    if not keys:
        log.warning(
            "NO API KEY IS CONFIGURED (allow_unauthenticated): every route is open to anyone who can reach this "
            "port. Set LLAMASERVE_API_KEYS or --api-key-file (make one with `llamaserve keygen`)."
        )
    else:
        log.info("API keys required (%d key(s) configured)", len(keys))
