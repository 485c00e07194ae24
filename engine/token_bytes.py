"""The bytes each token stands for, read from the tokenizer's own pieces.

Decoding one token to text loses them: a byte-level BPE token that holds part of a UTF-8 character decodes to
U+FFFD, the same text as every other fragment. Logprobs report bytes (and name such tokens by them), so they come
from the vocabulary piece itself: GPT-2's byte-to-character table for byte-level BPE (Llama 3 and 4),
`<0xNN>` byte tokens and `▁` for spaces for SentencePiece vocabularies (Llama 2).
"""

from __future__ import annotations

import json
import re
from typing import Any

_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, reversed: the printable character each byte is written as -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_OF_CHAR = _byte_level_alphabet()


class TokenBytes:
    """token id -> its bytes, computed once per id (a lookup per generated token and alternative)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._byte_level = _is_byte_level(tokenizer)
        self._added = set(getattr(tokenizer, "all_special_ids", []) or [])
        added_vocab = getattr(tokenizer, "get_added_vocab", None)
        if added_vocab is not None:
            self._added.update(added_vocab().values())
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._compute(token_id)
        return found

    def _compute(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if token_id in self._added:  # added and special tokens are stored as their text
            return piece.encode()
        if self._byte_level:
            try:
                return bytes(_BYTE_OF_CHAR[ch] for ch in piece)
            except KeyError:  # not a byte-level piece after all
                return piece.encode()
        byte = _SENTENCEPIECE_BYTE.fullmatch(piece)
        if byte:
            return bytes([int(byte[1], 16)])
        return piece.replace("▁", " ").encode()


def _is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return False
    decoders = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(d.get("type") == "ByteLevel" for d in decoders)
