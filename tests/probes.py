"""Small helpers for the protection tests: Prometheus text, access-log lines, streamed bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import psutil


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels must match exactly those given)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def access_lines(log_text: str) -> list[dict]:
    lines = []
    for line in log_text.splitlines():
        if line.startswith("{") and '"request_id"' in line:
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    return lines


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def engine_in_flight(base_url: str, headers: dict[str, str] | None = None) -> float | None:
    text = httpx.get(base_url + "/metrics", headers=headers, timeout=10).text
    return metric(text, "llamaserve_engine_requests_in_flight")


def sse_events(raw: str) -> tuple[list[dict], bool]:
    """(decoded data events, whether the stream ended with [DONE]); keep-alive comments skipped."""
    events, done = [], False
    for block in raw.split("\n\n"):
        if not block.strip() or block.strip().startswith(":"):
            continue
        data = block.strip().removeprefix("data: ")
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def alive(processes: list[psutil.Process]) -> list[str]:
    """Those of `processes` still running (zombies count as gone), as "pid name"."""
    found = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass
    return found
