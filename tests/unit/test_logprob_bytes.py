"""Token bytes for logprobs: read from the tokenizer's pieces, and legacy logprobs naming byte fragments by them."""

from __future__ import annotations

import pytest

from engine.outputs import TokenLogprob
from engine.token_bytes import TokenBytes
from server.pipeline.render import CompletionFlavor, legacy_alternatives, legacy_token_name


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("text", ["héllo → ☃", "plain words", "日本語 🦙"])
def test_token_bytes_join_to_the_text(tokenizer, text):
    token_bytes = TokenBytes(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(token_bytes(i) for i in ids) == text.encode()


def test_fragments_of_one_character_have_their_own_bytes(tokenizer):
    token_bytes = TokenBytes(tokenizer)
    ids = tokenizer.encode("☃", add_special_tokens=False)
    assert len(ids) > 1  # the tiny vocabulary splits it into byte tokens
    assert {tokenizer.decode([i]) for i in ids} == {"\ufffd"}  # as text they are all the same
    assert [token_bytes(i) for i in ids] == [b"\xe2", b"\x98", b"\x83"]


def test_special_tokens_are_their_text(tokenizer):
    token_bytes = TokenBytes(tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert token_bytes(eot) == b"<|eot_id|>"


def test_legacy_name_of_a_fragment_is_its_bytes():
    assert legacy_token_name("\ufffd", b"\xe2\x80") == "bytes:\\xe2\\x80"
    assert legacy_token_name(" the", b" the") == " the"
    assert legacy_token_name("é", "é".encode()) == "é"


def test_legacy_alternatives_keep_one_key_per_candidate():
    top = [("\ufffd", -1.0, b"\xe2"), ("\ufffd", -1.5, b"\x98"), ("a", -2.0, b"a"), ("\ufffd", -2.5, b"\x83")]
    assert legacy_alternatives(top) == {"bytes:\\xe2": -1.0, "bytes:\\x98": -1.5, "a": -2.0, "bytes:\\x83": -2.5}


def test_legacy_alternatives_tell_equal_texts_apart_by_bytes():
    # An added token that spells a vocabulary piece decodes to the same text.
    top = [("<x>", -1.0, b"<x>"), ("<x>", -2.0, b"<x>\x00")]
    assert len(legacy_alternatives(top)) == 2


def test_legacy_logprobs_name_the_sampled_fragment_as_in_its_alternatives():
    lp = TokenLogprob("\ufffd", 7, -0.5, [("\ufffd", -0.5, b"\xe2"), ("\ufffd", -0.7, b"\x98")], token_bytes=b"\xe2")
    rendered = CompletionFlavor()._legacy([lp], 0)
    assert rendered["tokens"] == ["bytes:\\xe2"]
    assert rendered["top_logprobs"] == [{"bytes:\\xe2": -0.5, "bytes:\\x98": -0.7}]


class _SentencePieceVocabulary:
    """A SentencePiece-style tokenizer (Llama 2): byte tokens are `<0xNN>`, a leading space is `▁`."""

    all_special_ids = [0]
    pieces = {0: "<s>", 1: "<0xE2>", 2: "▁the", 3: "llama"}

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.pieces[token_id]


def test_sentencepiece_byte_tokens_and_spaces():
    token_bytes = TokenBytes(_SentencePieceVocabulary())
    assert [token_bytes(i) for i in range(4)] == [b"<s>", b"\xe2", b" the", b"llama"]
