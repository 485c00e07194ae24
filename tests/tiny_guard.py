"""Builds tiny Llama Guard stand-ins: Llama-architecture checkpoints that always give one fixed verdict.

They load through the same vLLM loader and render through Llama Guard 3's chat template (engine/guard_format.py)
as the real guard, so content safety can be tested end to end on a CPU. How the verdict is fixed: every attention
and MLP output projection is zero, so the hidden state at each position is just that token's embedding, and the
output head maps each token of a chain to the next one (greedy decoding follows the chain):
    <last prompt token> -> "unsafe" pieces -> "\\n" -> "S1" pieces -> <|eot_id|>
Each token has one successor, so a chain's tokens must all differ. The template ends with "\\n\\n" and a verdict
holds "\\n": the guard's tokenizer (the tiny model's, see engine/tiny_model.py) gains "\\n\\n" as a token of its own.
Building is deterministic and cached by version and verdict.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine import guard_format
from engine.build_cache import build_once
from engine.tiny_model import build_tokenizer

BUILD_VERSION = "tiny-guard-v1"
DOUBLE_NEWLINE = "\n\n"


def guard_dir(cache_dir: Path, verdict: str) -> Path:
    slug = "-".join(verdict.lower().replace(",", " ").split())
    return Path(cache_dir) / f"{BUILD_VERSION}-{slug}"


def ensure_tiny_guard(cache_dir: Path, verdict: str = "unsafe\nS1") -> Path:
    """The directory of a tiny guard that always answers `verdict` (e.g. "safe", "unsafe\\nS1,S10")."""
    guard_format.parse_verdict(verdict)  # only real verdicts
    target = guard_dir(cache_dir, verdict)
    return build_once(target, "config.json", lambda staging: _build(staging, verdict))


def guard_tokenizer():
    from tokenizers import AddedToken

    tokenizer = build_tokenizer()
    tokenizer.add_tokens([AddedToken(DOUBLE_NEWLINE, normalized=False, special=False)])
    tokenizer.chat_template = guard_format.CHAT_TEMPLATE
    tokenizer.model_max_length = 4096
    return tokenizer


def verdict_chain(tokenizer, verdict: str) -> list[int]:
    """The token ids greedy decoding must visit: the prompt's last token, the verdict's tokens, <|eot_id|>."""
    last = tokenizer.encode(guard_format.render_prompt([{"role": "user", "content": "x"}]), add_special_tokens=False)[-1]
    chain = [last, *tokenizer.encode(verdict, add_special_tokens=False), tokenizer.convert_tokens_to_ids("<|eot_id|>")]
    if len(set(chain)) != len(chain):
        raise ValueError(f"verdict {verdict!r} repeats a token, so no fixed chain can produce it: {chain}")
    return chain


def _build(out: Path, verdict: str) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = guard_tokenizer()
    chain = verdict_chain(tokenizer, verdict)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")}
    stop_ids = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    config = LlamaConfig(
        vocab_size=-(-len(tokenizer) // 8) * 8,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # the CPU attention backend rejects smaller heads
        max_position_embeddings=4096,
        rope_theta=500000.0,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>"),
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.zero_()
        # Row `nxt` points along `tok`'s embedding: after the final norm, `tok` scores sqrt(hidden) * 8 on it and
        # about +-1 on any other row (random directions are near-orthogonal in 128 dimensions).
        for tok, nxt in zip(chain, chain[1:]):
            head[nxt] = 8 * embed[tok] / embed[tok].norm()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=stop_ids, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "llamaserve.json").write_text(
        json.dumps({"built_by": "llamaserve", "version": BUILD_VERSION, "verdict": verdict})
    )
