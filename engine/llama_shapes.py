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


def config(shape: str, vocab_size: int = LLAMA_3_VOCAB) -> dict[str, Any]:
    hidden, mlp, layers, heads, kv_heads, head_dim, tied, rope_scaling = SHAPES[shape]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "rope_scaling": rope_scaling, "tie_word_embeddings": tied,
        "attention_bias": False, "mlp_bias": False, "vocab_size": vocab_size,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    }


def write_model_dir(shape: str, directory: Path, tokenizer_dir: Path, vocab_size: int = LLAMA_3_VOCAB) -> Path:
    """`directory` with `shape`'s config.json and the tokenizer of `tokenizer_dir`. A vocab_size of the
    tokenizer's own size keeps every sampled token printable (the tiny tokenizer knows 1024 tokens)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, directory / name)
    body = config(shape, vocab_size)
    tiny = json.loads((tokenizer_dir / "config.json").read_text())
    if vocab_size != LLAMA_3_VOCAB:  # the tokenizer's own special-token ids
        body.update({k: tiny[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in tiny})
    (directory / "config.json").write_text(json.dumps(body, indent=1))
    return directory


if __name__ == "__main__":  # python -m engine.llama_shapes SHAPE DIR TOKENIZER_DIR [VOCAB_SIZE]
    import sys

    shape, out, tokenizer = sys.argv[1:4]
    vocab = int(sys.argv[4]) if len(sys.argv) > 4 else LLAMA_3_VOCAB
    print(write_model_dir(shape, Path(out), Path(tokenizer), vocab))
