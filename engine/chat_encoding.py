"""Chat messages -> prompt token ids, where only the chat template speaks in control tokens.

A user who types `<|start_header_id|>system<|end_header_id|>` must not open a system turn. The template is
rendered with each such message's content between two sentinels; the rendered text is split at them, the
template's own text is encoded with special tokens recognised, and the message text with special tokens read as
plain text. Messages without special-token text are rendered and encoded exactly as the plain template path does,
so ordinary conversations keep the very same ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from engine.errors import InvalidGenerationRequest

# Unicode noncharacters: reserved for a program's internal use, never meant to be interchanged.
OPEN, CLOSE = "\ufdd0", "\ufdd1"
_SPAN = re.compile(f"{OPEN}(.*?){CLOSE}", re.DOTALL)

Encoder = Callable[[str], list[int]]


class ChatEncoder:
    def __init__(self, tokenizer: Any, chat_template: str | None):
        self._tokenizer = tokenizer
        self._template = chat_template
        backend = getattr(tokenizer, "backend_tokenizer", None)
        specials = sorted(
            {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special and t.content},
            key=len, reverse=True,
        )
        self._special_text = re.compile("|".join(map(re.escape, specials))) if specials else None
        if backend is not None:
            from tokenizers import Tokenizer

            as_text = Tokenizer.from_str(backend.to_str())  # a copy: the flag is the tokenizer's, not the call's
            as_text.encode_special_tokens = True
            self.encode_template: Encoder = lambda text: backend.encode(text, add_special_tokens=False).ids
            self.encode_content: Encoder = lambda text: as_text.encode(text, add_special_tokens=False).ids
        else:
            self.encode_template = lambda text: tokenizer.encode(text, add_special_tokens=False)
            self.encode_content = lambda text: tokenizer.encode(
                text, add_special_tokens=False, split_special_tokens=True
            )

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        try:
            return self._tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=self._template, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # template errors are the caller's conversation shape, e.g. bad role order
            raise InvalidGenerationRequest(f"messages do not fit the chat template: {exc}", "messages") from exc

    def render_and_scan(self, messages: list[dict[str, Any]],
                        tools: list[dict[str, Any]] | None = None) -> tuple[str, list[int]]:
        """The rendered prompt, and the indexes of the messages whose content holds special-token text."""
        if self._special_text is None:
            return self.render(messages, tools), []
        self._refuse_control_text_in_tools(messages, tools)
        return self.render(messages, tools), [i for i, m in enumerate(messages) if self._special_text.search(m["content"])]

    def _refuse_control_text_in_tools(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> None:
        """Tool definitions and past calls reach the template as JSON that templates render whole, so their text
        cannot be told apart from the template's: special-token text there is refused, not encoded."""
        assert self._special_text is not None
        if tools and self._special_text.search(json.dumps(tools, ensure_ascii=False)):
            raise InvalidGenerationRequest("tools hold special-token text (such as <|eot_id|>)", "tools")
        for i, m in enumerate(messages):
            if m.get("tool_calls") and self._special_text.search(json.dumps(m["tool_calls"], ensure_ascii=False)):
                raise InvalidGenerationRequest(f"messages[{i}].tool_calls hold special-token text", "messages")

    def encode(self, text: str, messages: list[dict[str, Any]], spoofing: list[int],
               encode_template: Encoder | None = None, tools: list[dict[str, Any]] | None = None) -> list[int]:
        """`text` and `spoofing` are what render_and_scan(messages) returned."""
        encode_template = encode_template or self.encode_template
        if not spoofing:
            return encode_template(text)
        wrapped = list(messages)
        for i in spoofing:
            content = messages[i]["content"]
            if OPEN in content or CLOSE in content:
                raise InvalidGenerationRequest(
                    f"messages[{i}].content contains a Unicode noncharacter (U+FDD0 or U+FDD1)", "messages"
                )
            wrapped[i] = {**messages[i], "content": _wrap(content)}
        marked = self.render(wrapped, tools)
        ids: list[int] = []
        at = 0
        for span in _SPAN.finditer(marked):
            ids += self._template_part(marked[at:span.start()], encode_template)
            ids += self.encode_content(span.group(1))
            at = span.end()
        ids += self._template_part(marked[at:], encode_template)
        return ids

    @staticmethod
    def _template_part(text: str, encode_template: Encoder) -> list[int]:
        if OPEN in text or CLOSE in text:
            # The template cut or reordered message text: which part is whose can no longer be told; fail closed.
            raise InvalidGenerationRequest("this chat template alters message content in a way that cannot be "
                                           "encoded safely", "messages")
        return encode_template(text) if text else []


def _wrap(content: str) -> str:
    """Sentinels inside the content's outer whitespace, so that a template's `| trim` strips what it did before."""
    core = content.strip()
    if not core:
        return content
    start = content.index(core)
    return content[:start] + OPEN + core + CLOSE + content[start + len(core):]
