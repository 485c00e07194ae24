"""The engine's fast text encoder gives exactly the ids the Hugging Face tokenizer gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(tiny_model))


@pytest.fixture(scope="module")
def encode(tokenizer):
    from engine.core import _text_encoder

    return _text_encoder(tokenizer)


def test_the_fast_path_is_the_rust_backend(tokenizer, encode):
    # Without a backend the encoder falls back to tokenizer.encode; the tiny model's tokenizer has one.
    assert tokenizer.backend_tokenizer is not None
    assert encode("hello", True) == tokenizer.backend_tokenizer.encode("hello", add_special_tokens=True).ids


@pytest.mark.parametrize("text", [
    "", " ", "hello world", "  leading and trailing  ", "line\nbreaks\r\n\ttabs",
    "héllo wörld ✓ 日本語 🦙", "<|begin_of_text|>hi<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nx",
    "not <|a special|> token", "a" * 3000,
])
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_same_ids_as_the_tokenizer(tokenizer, encode, text, add_special_tokens):
    assert encode(text, add_special_tokens) == tokenizer.encode(text, add_special_tokens=add_special_tokens)


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL)), max_size=6), special=st.booleans())
def test_same_ids_on_any_text(tokenizer, encode, parts, special):
    text = "".join(parts)
    assert encode(text, special) == tokenizer.encode(text, add_special_tokens=special)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL)), max_size=6), special=st.booleans())
def test_the_off_loop_encoder_gives_the_same_ids(tokenizer, encode, parts, special):
    from engine.core import _text_encoder

    text = "".join(parts)
    assert _text_encoder(tokenizer, off_loop=True)(text, special) == encode(text, special)
