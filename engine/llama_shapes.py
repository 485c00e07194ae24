"""Model directories with a real Llama architecture and no weights, for vLLM's `load_format: dummy` (random
weights made on the GPU): a configuration check or a benchmark of a real model's shape with nothing to download.

Each directory holds the architecture's config.json (dimensions as Meta's published checkpoints) and the tiny
model's tokenizer and chat template (engine/tiny_model.py), since the real tokenizers are behind the model hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

_LLAMA_3_1 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192, "rope_type": "llama3"}
_LLAMA_3_2 = {**_LLAMA_3_1, "factor": 32.0}

# hidden size, MLP size, layers, attention heads, KV heads, head dim, tied embeddings, RoPE scaling
SHAPES: dict[str, tuple[int, int, int, int, int, int, bool, dict[str, Any]]] = {
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 64, True, _LLAMA_3_2),
    "llama-3.2-3b": (3072, 8192, 28, 24, 8, 128, True, _LLAMA_3_2),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128, False, _LLAMA_3_1),
    "llama-3.1-70b": (8192, 28672, 80, 64, 8, 128, False, _LLAMA_3_1),
    "llama-3.1-405b": (16384, 53248, 126, 128, 8, 128, False, _LLAMA_3_1),
}
LLAMA_3_VOCAB = 128256
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def config(shape: str) -> dict[str, Any]:
    hidden, mlp, layers, heads, kv_heads, head_dim, tied, rope_scaling = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "rope_scaling": rope_scaling, "tie_word_embeddings": tied,
        "attention_bias": False, "mlp_bias": False, "vocab_size": LLAMA_3_VOCAB,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    }


def write_model_dir(shape: str, directory: Path, tokenizer_dir: Path, tokenizer_vocab: bool = False) -> Path:
    """`directory` with `shape`'s config.json and the tokenizer of `tokenizer_dir`. With `tokenizer_vocab`, the
    vocabulary is the tokenizer's own (the tiny one's 1024 tokens, with its special-token ids), so that every token
    the model samples is one the tokenizer can print; otherwise Llama 3's 128256."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, directory / name)
    body = config(shape)
    if tokenizer_vocab:
        own = json.loads((tokenizer_dir / "config.json").read_text())
        body.update({k: own[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id") if k in own})
    (directory / "config.json").write_text(json.dumps(body, indent=1))
    return directory


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.llama_shapes", description=__doc__)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("directory", type=Path)
    parser.add_argument("tokenizer_dir", type=Path, help="a model directory whose tokenizer to copy (the tiny model's)")
    parser.add_argument("--tokenizer-vocab", action="store_true", help="the tokenizer's vocabulary, not Llama 3's")
    args = parser.parse_args()
    print(write_model_dir(args.shape, args.directory, args.tokenizer_dir, args.tokenizer_vocab))
