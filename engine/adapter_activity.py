"""Which LoRA adapters have requests running, and which have requests waiting, in the engine: what the Inference
Gateway's endpoint picker reads from vllm:lora_requests_info to send an adapter's requests where it is active.

vLLM learns that a request was queued only from the request's first step, so while an adapter's requests all wait
behind others it is in neither of vLLM's lists. Here each adapter's requests are counted from the moment they are
handed to the engine until they end; those the engine has not scheduled (its own count of running ones) wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterReading:
    max_loras: int  # adapters in one engine batch
    running: tuple[str, ...]  # adapter names, sorted
    waiting: tuple[str, ...]


class AdapterActivity:
    def __init__(self, max_loras: int, scheduled: Callable[[], Mapping[str, int]]):
        """`scheduled`: the engine's count of each adapter's requests it has scheduled and not yet finished."""
        self.max_loras = max_loras
        self._scheduled = scheduled
        self._in_engine: Counter[str] = Counter()

    @contextmanager
    def holding(self, adapter: str, sequences: int) -> Iterator[None]:
        """While the engine holds `sequences` requests (the `n` of one generation) on `adapter`."""
        self._in_engine[adapter] += sequences
        try:
            yield
        finally:
            self._in_engine[adapter] -= sequences

    def reading(self) -> AdapterReading:
        running = {name: count for name, count in self._scheduled().items() if count > 0}
        waiting = [name for name, count in self._in_engine.items() if count > running.get(name, 0)]
        return AdapterReading(self.max_loras, tuple(sorted(running)), tuple(sorted(waiting)))
