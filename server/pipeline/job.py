"""A generation request past the gate: what the pipeline, the limits and the metrics know of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.request import GenerationInput
from schemas import GenerationRequest

if TYPE_CHECKING:
    from server.pipeline import render
    from server.observe.metrics import RequestMetrics
    from server.safety.moderation import Moderation


@dataclass
class Job:
    """A validated request, converted for the engine."""

    request_id: str
    request: GenerationRequest
    flavor: render.Flavor
    prompts: list[list[int]]
    engine_input: GenerationInput  # the same for each prompt
    echo_texts: list[str] | None = None  # prompt texts to echo, one per prompt
    metrics: RequestMetrics | None = None  # its token counts for the metrics and the access log, set by the route
    moderation: Moderation | None = None  # content safety checks, set by the route when a guard is on

    @property
    def model_name(self) -> str | None:
        """The adapter's name, which responses report as their model; None: the base model's."""
        return self.engine_input.adapter.name if self.engine_input.adapter else None

    @property
    def total_choices(self) -> int:
        return len(self.prompts) * self.engine_input.n
