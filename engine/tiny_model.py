"""Builds the local default model: a tiny Llama-architecture checkpoint with random weights.

It goes through the same loader, tokenizer and chat-template path as a real Llama 3 model, so the whole
server can run and be tested on a machine with no GPU and no model hub. Its text is noise by design.
Building is deterministic: same corpus, same tokenizer, same seeded weights.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from engine.build_cache import build_once

BUILD_VERSION = "tiny-llama3-v2"  # v2: the chat template gained Llama 3.1 tool calling

# Llama 3's special tokens, in Llama 3's order, so templates and stop rules written for Llama 3 apply as is.
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]

# A trimmed Llama 3.1 Instruct template, tool calling included. Without tools, every message is a header block
# with trimmed content and <|eot_id|>. With tools, as in Meta's template: the system turn opens with
# "Environment: ipython", the first user turn lists the functions as JSON, an assistant call is written
# {"name": ..., "parameters": ...} and ends with <|eom_id|> (one turn per call, so several calls and an empty
# tool_calls both render), and results come back under the ipython role as {"output": ...}.
CHAT_TEMPLATE = r"""{{- bos_token }}
{%- set tools = tools if tools is defined and tools else none %}
{%- set ns = namespace(tools_listed=false) %}
{%- if tools is not none and messages[0]['role'] != 'system' %}
    {{- '<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython<|eot_id|>' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}
        {%- for call in message['tool_calls'] %}
            {%- set args = call['function']['arguments'] %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + call['function']['name'] + '", "parameters": ' }}
            {{- args if args is string else args | tojson }}
            {{- '}<|eom_id|>' }}
        {%- endfor %}
    {%- elif message['role'] in ('tool', 'ipython') %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + ({'output': message['content']} | tojson) + '<|eot_id|>' }}
    {%- else %}
        {%- set content = message['content'] | trim %}
        {%- if tools is not none and message['role'] == 'system' and loop.first %}
            {%- set content = 'Environment: ipython\n\n' + content %}
        {%- elif tools is not none and message['role'] == 'user' and not ns.tools_listed %}
            {%- set ns.tools_listed = true %}
            {%- set listing = namespace(text='Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n') %}
            {%- for t in tools %}
                {%- set listing.text = listing.text + (t | tojson) + '\n\n' %}
            {%- endfor %}
            {%- set content = listing.text + content %}
        {%- endif %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + content + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"""

_WORDS = (
    "the a an of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said each she which do their time "
    "if will way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been now "
    "find any new work part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small end put home "
    "read hand port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father llama model "
    "server token stream answer question hello assistant user system json code python data number list"
).split()

VOCAB_SIZE = 1024


def default_model_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / BUILD_VERSION


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Return the tiny model's directory, building it there first if it is missing."""
    target = default_model_dir(cache_dir)
    return build_once(target, "config.json", _build)


def _corpus(lines: int = 4000) -> list[str]:
    rng = random.Random(0)
    text = []
    for _ in range(lines):
        words = rng.choices(_WORDS, k=rng.randint(4, 16))
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":"])
        text.append(sentence + (f" {rng.randint(0, 9999)}" if rng.random() < 0.2 else ""))
    return text


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos = "<|begin_of_text|>"
    # Like Llama 3's tokenizer: plain encoding starts with BOS; the chat template writes its own.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def _build(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    stop_ids = [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]]
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # the CPU attention backend rejects smaller heads
        max_position_embeddings=1024,
        rope_theta=500000.0,
        # Wider than a trained model's init so that the random model has peaked, not flat, token distributions.
        initializer_range=0.2,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=stop_ids,
        pad_token_id=ids["<|finetune_right_pad_id|>"],
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=stop_ids, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "llamaserve.json").write_text(json.dumps({"built_by": "llamaserve", "version": BUILD_VERSION}))
