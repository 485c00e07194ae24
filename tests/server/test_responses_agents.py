"""The OpenAI Agents SDK, unchanged, against llamaserve's /v1 with its Responses model: an agent with one function
tool, run by `Runner.run`, calls the tool (forced by `tool_choice`, as the tiny model has random weights) and
ends with the tool's result in its history."""

from __future__ import annotations

import asyncio
from typing import Annotated

from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from agents.items import ToolCallItem, ToolCallOutputItem
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

MODEL = "llamaserve-tiny-llama3"


class Report(BaseModel):
    """The agent's answer; bounded, so that the random-weight model finishes it within its tokens."""

    sunny: bool


def test_an_agent_runs_its_function_tool_through_the_responses_api(server):
    set_tracing_disabled(True)
    called: list[str] = []

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:  # bounded, as Report is
        """The weather in a city."""
        called.append(city)
        return f"sunny in {city}"

    async def run():
        client = AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
        try:
            # After the call the SDK resets tool_choice to auto, and the next turn answers in the output type's
            # schema (text.format json_schema). 100 tokens hold the call's JSON (the tiny vocabulary spells it a
            # character or two per token) and the bounded answer.
            agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather],
                          output_type=Report, model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                          model_settings=ModelSettings(tool_choice="get_weather", max_tokens=100, temperature=0))
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)
        finally:
            await client.close()

    result = asyncio.run(run())
    assert len(called) == 1
    calls = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    outputs = [i for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert len(calls) == 1 and calls[0].raw_item.name == "get_weather"
    assert [o.output for o in outputs] == [f"sunny in {called[0]}"]
    history = result.to_input_list()
    assert any(i.get("type") == "function_call_output" and i["output"] == f"sunny in {called[0]}" for i in history)
    assert isinstance(result.final_output, Report)
