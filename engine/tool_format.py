"""Which tool-call format a Llama checkpoint writes, read from its config and chat template."""

from __future__ import annotations

from typing import Any

# Every format a checkpoint may write calls in, and so every one the server can parse (server/pipeline/tools).
TOOL_CALL_FORMATS = ("llama3_json", "pythonic", "llama4_pythonic")


def detect(hf_config: Any, chat_template: str | None) -> str:
    """llama4_pythonic for Llama 4; pythonic for Llama 3.2 1B/3B; llama3_json (3.1, 3.3, and the rest) otherwise.

    Llama 3.2's text models share 3.1's template, so the config tells them apart: their rope scaling factor is
    32 where 3.1 and 3.3 have 8.
    """
    template = chat_template or ""
    if getattr(hf_config, "model_type", "") == "llama4" or "<|python_start|>" in template or "<|header_start|>" in template:
        return "llama4_pythonic"
    rope = getattr(hf_config, "rope_scaling", None) or getattr(hf_config, "rope_parameters", None) or {}
    if isinstance(rope, dict) and rope.get("factor") == 32.0 and rope.get("rope_type", rope.get("type")) == "llama3":
        return "pythonic"
    return "llama3_json"
