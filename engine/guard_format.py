"""Llama Guard 3's side of content safety, in plain Python (no vLLM, no HTTP): the conversation it reads,
its prompt, its verdict, and how its categories map onto Azure's content filter names.

Meta's format (Llama Guard 3 model card, and the chat template shipped with Llama-Guard-3-8B): one user turn
holding the task, the S1..S14 category list and the conversation as `User:` / `Agent:` lines; the guard judges
the LAST message's role ('User' for a prompt check, 'Agent' for an output check) and answers `safe`, or
`unsafe` and a second line of comma-separated categories (`S1,S10`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# S-code -> (Meta's name, our name in error bodies and metrics).
CATEGORIES: dict[str, tuple[str, str]] = {
    "S1": ("Violent Crimes", "violent_crimes"),
    "S2": ("Non-Violent Crimes", "non_violent_crimes"),
    "S3": ("Sex Crimes", "sex_crimes"),
    "S4": ("Child Exploitation", "child_exploitation"),
    "S5": ("Defamation", "defamation"),
    "S6": ("Specialized Advice", "specialized_advice"),
    "S7": ("Privacy", "privacy"),
    "S8": ("Intellectual Property", "intellectual_property"),
    "S9": ("Indiscriminate Weapons", "indiscriminate_weapons"),
    "S10": ("Hate", "hate"),
    "S11": ("Self-Harm", "self_harm"),
    "S12": ("Sexual Content", "sexual_content"),
    "S13": ("Elections", "elections"),
    "S14": ("Code Interpreter Abuse", "code_interpreter_abuse"),
}
ALL_CODES: tuple[str, ...] = tuple(CATEGORIES)

# Azure's four harm categories, fed by the Llama Guard categories that are the same harm; the other ten keep
# their own names next to them.
AZURE_HARMS: dict[str, tuple[str, ...]] = {
    "hate": ("S10",),
    "sexual": ("S3", "S4", "S12"),
    "violence": ("S1",),
    "self_harm": ("S11",),
}
_AZURE_OF = {code: harm for harm, codes in AZURE_HARMS.items() for code in codes}
UNSPECIFIED = "unspecified"  # an `unsafe` verdict that named no category

_CATEGORY_BLOCK = "\n".join(f"{code}: {name}." for code, (name, _) in CATEGORIES.items())

PROMPT_HEAD = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
    "with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n" + _CATEGORY_BLOCK + "\n"
    "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
)
PROMPT_TAIL = (
    "<END CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST {role} message in the above "
    "conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second line must include a "
    "comma-separated list of violated categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
)

def _jinja_text(text: str) -> str:
    """`text` as a Jinja expression, with each `{role}` standing for the template variable `role`."""
    literal = lambda part: '"' + part.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return " + role + ".join(literal(part) for part in text.split("{role}"))


# The same prompt as a Jinja chat template (Llama-Guard-3-8B's, in substance): a guard model served with it
# renders a conversation exactly as `render_prompt` does.
CHAT_TEMPLATE = (
    "{%- if messages[-1]['role'] == 'assistant' %}{%- set role = 'Agent' %}{%- else %}{%- set role = 'User' %}"
    "{%- endif %}"
    "{{- " + _jinja_text(PROMPT_HEAD) + " }}"
    "{%- for message in messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}{%- set who = 'User' %}{%- else %}{%- set who = 'Agent' %}{%- endif %}"
    "{{- who + ': ' + message['content'] | trim + '\\n\\n' }}"
    "{%- endfor %}"
    "{{- " + _jinja_text(PROMPT_TAIL) + " }}"
)


def conversation(messages: list[dict[str, Any]], output: str | None = None) -> list[dict[str, str]]:
    """Any chat history (system, developer, tool turns...) as the strictly alternating user/assistant turns the
    guard reads; with `output`, the model's answer is the last (assistant) turn, so the guard judges it.
    Each message's tool calls follow its text (the model reads them too)."""
    turns: list[dict[str, str]] = []
    for m in [*messages, *([{"role": "assistant", "content": output}] if output is not None else [])]:
        role = "assistant" if m.get("role") == "assistant" else "user"
        content = _spoken(m)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        elif turns or role == "user":
            turns.append({"role": role, "content": content})
        else:  # a history that opens with the assistant: its words still count, as context
            turns.append({"role": "user", "content": ""})
            turns.append({"role": role, "content": content})
    return turns


def tool_definitions(tools: list[dict[str, Any]]) -> dict[str, str]:
    """Tool definitions as a system message (the user's side, for the guard), each function's JSON as Llama 3.1's
    template shows it to the model: names, descriptions, parameters and enums included."""
    listed = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
    return {"role": "system", "content": "Functions the assistant can call:\n" + listed}


def _spoken(message: dict[str, Any]) -> str:
    """A message's text followed by its tool calls, each as Llama 3's JSON tool-call format writes it."""
    calls = [
        json.dumps({"name": c["function"]["name"], "parameters": c["function"]["arguments"]}, ensure_ascii=False)
        for c in message.get("tool_calls") or []
    ]
    return "\n".join(part for part in (message.get("content") or "", *calls) if part)


def render_prompt(turns: list[dict[str, str]]) -> str:
    """The guard prompt for alternating `turns` (see `conversation`), as CHAT_TEMPLATE renders it."""
    role = "Agent" if turns[-1]["role"] == "assistant" else "User"
    body = "".join(f"{'User' if t['role'] == 'user' else 'Agent'}: {t['content'].strip()}\n\n" for t in turns)
    return PROMPT_HEAD.format(role=role) + body + PROMPT_TAIL.format(role=role)


@dataclass(frozen=True)
class GuardReply:
    """A guard's raw answer and the tokens the check cost (its prompt and its answer)."""

    text: str
    tokens: int


@dataclass(frozen=True)
class GuardFit:
    """What a guard can read: its context, and the tokens its own template and verdict take from it."""

    context: int
    overhead: int


@dataclass(frozen=True)
class Verdict:
    safe: bool
    codes: tuple[str, ...] = ()  # S-codes, or UNSPECIFIED for an unsafe verdict without categories


class VerdictError(ValueError):
    """The guard answered something that is not a Llama Guard verdict."""


def parse_verdict(text: str) -> Verdict:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise VerdictError("the guard gave an empty answer")
    first = lines[0].lower()
    if first == "safe":
        return Verdict(True)
    if first != "unsafe":
        raise VerdictError(f"the guard's answer does not start with safe or unsafe: {text[:80]!r}")
    codes: list[str] = []
    for part in (lines[1] if len(lines) > 1 else "").split(","):
        code = part.strip().upper()
        if not code:
            continue
        if code not in CATEGORIES:
            raise VerdictError(f"the guard named an unknown category {part.strip()!r}")
        if code not in codes:
            codes.append(code)
    return Verdict(False, tuple(codes) or (UNSPECIFIED,))


def category_name(code: str) -> str:
    """A category's name in errors and metrics: Azure's harm name where there is one, else Llama Guard's."""
    if code == UNSPECIFIED:
        return UNSPECIFIED
    return _AZURE_OF.get(code) or CATEGORIES[code][1]


def resolve_codes(names: list[str]) -> frozenset[str]:
    """Settings name categories by S-code, Llama Guard name or Azure name (`S1`, `violent_crimes`, `violence`)."""
    by_name = {name: (code,) for code, (_, name) in CATEGORIES.items()}
    by_name.update(AZURE_HARMS)
    codes: set[str] = set()
    for raw in names:
        key = raw.strip()
        if key.upper() in CATEGORIES:
            codes.add(key.upper())
        elif key.lower() in by_name:
            codes.update(by_name[key.lower()])
        elif key.lower() in ("all", "*"):
            codes.update(ALL_CODES)
        else:
            raise ValueError(f"unknown content safety category {raw!r} (use S1..S14 or a category name)")
    return frozenset(codes)


def filter_results(verdict: Verdict, blocking: frozenset[str]) -> dict[str, dict[str, object]]:
    """Azure OpenAI's content_filter_result: the four harms with {filtered, severity}, then the other detected
    categories with {filtered, detected}. Llama Guard gives no severity: a detected harm is reported `high`."""
    detected = set(verdict.codes)
    out: dict[str, dict[str, object]] = {}
    for harm, codes in AZURE_HARMS.items():
        hit = detected.intersection(codes)
        out[harm] = {"filtered": bool(hit & blocking), "severity": "high" if hit else "safe"}
    for code in verdict.codes:
        if code in _AZURE_OF:
            continue
        blocked = code in blocking or code == UNSPECIFIED
        out[category_name(code)] = {"filtered": blocked, "detected": True}
    return out


def blocked_codes(verdict: Verdict, blocking: frozenset[str]) -> list[str]:
    """The verdict's categories that block; an unsafe verdict without categories blocks unless nothing does."""
    if verdict.safe:
        return []
    if verdict.codes == (UNSPECIFIED,):
        return [UNSPECIFIED] if blocking else []
    return [c for c in verdict.codes if c in blocking]
