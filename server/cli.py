"""`llamaserve serve | keygen | build-model`."""

from __future__ import annotations

import argparse
import atexit
import logging
import math
import os
import secrets
import signal
import string
import sys
import typing
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from server.protection.security import load_keyring, require_keys_or_consent
from server.settings import Settings, describe_error, load_settings


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named after it; only flags actually given override env and YAML."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        help_text = field.description or ""
        if name == "lora_adapters":  # repeatable: --lora a=/path/a --lora b=/path/b
            parser.add_argument("--lora", flag, dest=name, action="append", default=None, help=help_text,
                                metavar="NAME=PATH")
        elif annotation in (bool, bool | None):  # --NAME / --no-NAME; unset: the default
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text, metavar=_metavar(annotation))


def _metavar(annotation: typing.Any) -> str:
    args = typing.get_args(annotation)
    base = next((a for a in args if a is not type(None)), annotation)
    return getattr(base, "__name__", "VALUE").upper()


def serve(settings: Settings) -> None:
    import uvicorn

    from engine.processes import single_threaded_torch
    from server.app import create_app
    from server.protection.connections import guarded_protocol
    from server.observe.access_log import configure_logging
    from server.state import state_of

    single_threaded_torch()  # before the tiny model's build: keeps forking the engine's processes safe
    configure_logging(settings.log_level)
    app = create_app(settings)
    state = state_of(app)
    protection = settings.protection

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.lifecycle.request_drain()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # server.observe.access_log writes one JSON line per request instead
        loop="uvloop",
        # httptools, with a header timeout and a connection cap (server/protection/connections.py).
        http=guarded_protocol(protection.header_timeout_s, protection.max_connections),
        # X-Forwarded-For names the client (its rate-limit bucket, its log line) only from trusted_proxies;
        # uvicorn's default would trust 127.0.0.1 (and $FORWARDED_ALLOW_IPS).
        proxy_headers=bool(protection.trusted_proxies),
        forwarded_allow_ips=list(protection.trusted_proxies),
        # The drain cancels what still runs at shutdown_grace_s; uvicorn's own cut only backs that up, early enough
        # that with the engine's stop (about 1 s) the process is gone within grace + 2 s.
        timeout_graceful_shutdown=math.ceil(protection.shutdown_grace_s + 1),
    )
    # uvicorn re-raises the signal it drained for once it is done; with the default action that would end a
    # clean drain with "killed by SIGTERM" instead of exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = Server(config)
    server.run()
    # 3: uvicorn's start-up failure code, e.g. the port is taken
    _exit_now(3 if not server.started else state.lifecycle.exit_code)


def _exit_now(code: int) -> None:
    """Exits once the server and its engine have stopped, skipping the interpreter's own teardown: with torch and
    vLLM loaded that is 2-3 s of C-level finalisation, which an orchestrator waiting for the exit (and the drain's
    promise of grace + 2 s) should not pay. Exit handlers still run; output is flushed."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def keygen() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llamaserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_setting_flags(commands.add_parser("serve", help="start the server"))
    commands.add_parser("keygen", help="print a new 32-character API key")
    build = commands.add_parser("build-model", help="build the tiny local model and print its directory")
    build.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.command == "keygen":
        print(keygen())
    elif args.command == "build-model":
        from engine.tiny_model import ensure_tiny_model

        print(ensure_tiny_model(args.cache_dir or Settings.model_fields["model_cache_dir"].get_default(call_default_factory=True)))
    else:
        flags = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
        try:
            settings = load_settings(**flags)
            # Keys asked for but empty, or no key and no --allow-unauthenticated: no start at all.
            require_keys_or_consent(settings, load_keyring(settings))
        except ValidationError as exc:  # pydantic's own text would echo inputs, secrets included
            sys.exit(f"llamaserve: invalid settings: {describe_error(exc)}")
        except Exception as exc:  # a bad flag, env var or YAML key: say which, without a traceback
            sys.exit(f"llamaserve: invalid settings: {exc}")
        serve(settings)


if __name__ == "__main__":
    main()
