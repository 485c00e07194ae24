"""A generation request past the gate: all that the later stages (respond, the guard, the metrics) read of it.
The wire model stops at the gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.request import GenerationInput

if TYPE_CHECKING:
    from server.observe.metrics import RequestMetrics
    from server.pipeline import render
    from server.pipeline.responses.objects import ResponseDraft
    from server.safety.moderation import Moderation


@dataclass
class Job:
    """A validated request, converted for the engine."""

    request_id: str
    flavor: render.Flavor
    prompts: list[list[int]]
    engine_input: GenerationInput  # the same for each prompt
    stream: bool = False
    # A stream's usage: in a last chunk of its own (stream_options.include_usage, on unless turned off), and in
    # every chunk (stream_options.continuous_usage_stats).
    usage_at_end: bool = True
    usage_in_every_chunk: bool = False
    echo_texts: list[str] | None = None  # prompt texts to echo, one per prompt
    # A chat's messages as its template takes them and the tools it declares, for the guard; None for completions.
    template_messages: list[dict[str, Any]] | None = None
    declared_tools: list[dict[str, Any]] | None = None
    metrics: RequestMetrics | None = None  # its token counts for the metrics and the access log, set by the route
    moderation: Moderation | None = None  # content safety checks, set by the route when a guard is on
    response: ResponseDraft | None = None  # a Responses request's response as far as the gate knows it

    @property
    def model_name(self) -> str | None:
        """The adapter's name, which responses report as their model; None: the base model's."""
        return self.engine_input.adapter.name if self.engine_input.adapter else None

    @property
    def total_choices(self) -> int:
        return len(self.prompts) * self.engine_input.n
