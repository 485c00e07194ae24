"""Llama Guard 3's prompt, verdicts and categories (engine/guard_format.py), and the tiny fixed-verdict guards'
token chains (tests/tiny_guard.py). Pure: no engine."""

from __future__ import annotations

import jinja2
import pytest

from engine import guard_format as g
from tests.tiny_guard import guard_tokenizer, verdict_chain


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("safe", g.Verdict(True)),
        ("  Safe\n", g.Verdict(True)),
        ("unsafe\nS1", g.Verdict(False, ("S1",))),
        ("unsafe\nS10,S1, s11", g.Verdict(False, ("S10", "S1", "S11"))),
        ("unsafe\nS2,S2", g.Verdict(False, ("S2",))),
        ("\n\nunsafe\n\nS14\n", g.Verdict(False, ("S14",))),
        ("unsafe", g.Verdict(False, (g.UNSPECIFIED,))),
    ],
)
def test_parse_verdict(answer, verdict):
    assert g.parse_verdict(answer) == verdict


@pytest.mark.parametrize("answer", ["", "  \n", "maybe", "unsafe\nS15", "unsafe\nviolence", "safety first"])
def test_parse_verdict_rejects_what_is_no_verdict(answer):
    with pytest.raises(g.VerdictError):
        g.parse_verdict(answer)


def test_categories_map_to_azure_harms_and_keep_llama_names_otherwise():
    assert [g.category_name(c) for c in ("S1", "S3", "S4", "S10", "S11", "S12")] == [
        "violence", "sexual", "sexual", "hate", "self_harm", "sexual"
    ]
    assert [g.category_name(c) for c in ("S2", "S9", "S14")] == [
        "non_violent_crimes", "indiscriminate_weapons", "code_interpreter_abuse"
    ]
    assert len(g.CATEGORIES) == 14


def test_resolve_codes_accepts_codes_llama_names_azure_names_and_all():
    assert g.resolve_codes(["S1", "s10"]) == {"S1", "S10"}
    assert g.resolve_codes(["sexual"]) == {"S3", "S4", "S12"}
    assert g.resolve_codes(["privacy", "Elections"]) == {"S7", "S13"}
    assert g.resolve_codes(["all"]) == set(g.ALL_CODES)
    assert g.resolve_codes([]) == set()
    with pytest.raises(ValueError, match="unknown content safety category"):
        g.resolve_codes(["violent"])


def test_filter_results_in_azure_shape():
    verdict = g.Verdict(False, ("S1", "S7"))
    results = g.filter_results(verdict, g.resolve_codes(["violence"]))
    assert results == {
        "hate": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"},
        "violence": {"filtered": True, "severity": "high"},
        "self_harm": {"filtered": False, "severity": "safe"},
        "privacy": {"filtered": False, "detected": True},  # detected, but privacy does not block here
    }


def test_blocked_codes_follow_the_policy():
    all_codes = g.resolve_codes(["all"])
    assert g.blocked_codes(g.Verdict(True), all_codes) == []
    assert g.blocked_codes(g.Verdict(False, ("S1", "S10")), g.resolve_codes(["hate"])) == ["S10"]
    assert g.blocked_codes(g.Verdict(False, ("S1",)), g.resolve_codes(["hate"])) == []
    assert g.blocked_codes(g.Verdict(False, (g.UNSPECIFIED,)), all_codes) == [g.UNSPECIFIED]
    assert g.blocked_codes(g.Verdict(False, (g.UNSPECIFIED,)), frozenset()) == []


def test_conversation_alternates_user_and_assistant():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "tool", "content": "42"},
        {"role": "user", "content": "And?"},
    ]
    assert g.conversation(messages) == [
        {"role": "user", "content": "Be brief.\n\nHi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "42\n\nAnd?"},
    ]
    assert g.conversation(messages, "Fine")[-1] == {"role": "assistant", "content": "Fine"}
    assert g.conversation([{"role": "assistant", "content": "x"}])[0] == {"role": "user", "content": ""}


def test_prompt_judges_the_last_role_and_lists_every_category():
    user = g.render_prompt(g.conversation([{"role": "user", "content": "  hi  "}]))
    agent = g.render_prompt(g.conversation([{"role": "user", "content": "hi"}], "there"))
    assert "unsafe content in 'User' messages" in user and "ONLY THE LAST User message" in user
    assert "unsafe content in 'Agent' messages" in agent and "ONLY THE LAST Agent message" in agent
    assert "User: hi\n\n<END CONVERSATION>" in user
    assert "User: hi\n\nAgent: there\n\n<END CONVERSATION>" in agent
    assert "S11: Self-Harm.\nS12: Sexual Content." in user
    assert user.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask:")
    assert user.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("output", [None, "an answer"])
def test_chat_template_renders_what_render_prompt_renders(output):
    turns = g.conversation([{"role": "system", "content": "s"}, {"role": "user", "content": 'quote " and \\ back'}], output)
    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    assert env.from_string(g.CHAT_TEMPLATE).render(messages=turns) == g.render_prompt(turns)


def test_chat_template_rejects_roles_that_do_not_alternate():
    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda message: (_ for _ in ()).throw(ValueError(message))
    with pytest.raises(ValueError, match="alternate"):
        env.from_string(g.CHAT_TEMPLATE).render(messages=[{"role": "user", "content": "a"}] * 2)


def test_tiny_guard_chains_start_at_the_prompts_last_token_and_end_at_eot():
    tokenizer = guard_tokenizer()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    chain = verdict_chain(tokenizer, "unsafe\nS1")
    assert chain[0] == prompt_ids[-1] == tokenizer.convert_tokens_to_ids("\n\n")
    assert tokenizer.decode(chain[1:-1]) == "unsafe\nS1"
    assert chain[-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # A verdict that revisits a token cannot come out of a chain where each token has one successor.
    with pytest.raises(ValueError, match="repeats a token"):
        verdict_chain(tokenizer, "unsafe\nS1,S2")


def test_format_module_is_pure():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(g.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    # The server and the tiny guard builder share it: the standard library only.
    assert imported <= {"__future__", "dataclasses", "json", "typing"}, imported
