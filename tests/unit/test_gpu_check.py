"""scripts/gpu-check and the parts it runs that this CPU host can check: the script's syntax and its CPU-host exit,
the model directory it serves, the settings it gives every test server, and the two servers' command lines of its
benchmark (each parsed by its own server's parser). The GPU run itself needs a GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench import dummy_weights
from engine.llama_shapes import SHAPES, write_model_dir
from tests.conftest import server_settings_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_without_a_gpu_it_says_so_and_exits_0_having_done_nothing(tmp_path):
    # An nvidia-smi that finds no GPU, as on a host with the driver tools and no device; first on the PATH.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    venv = tmp_path / "venv"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "LLAMASERVE_VENV": str(venv)}
    run = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "needs an NVIDIA GPU" in run.stdout
    assert not venv.exists(), "nothing is installed on a host without a GPU"


def test_the_model_directory_has_the_architecture_and_the_tokenizers_vocabulary(tiny_model, tmp_path):
    made = write_model_dir("llama-3.1-8b", tmp_path / "m", tiny_model, tokenizer_vocab=True)
    config = json.loads((made / "config.json").read_text())
    tiny = json.loads((tiny_model / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (4096, 32, 8)
    assert config["vocab_size"] == tiny["vocab_size"] and config["eos_token_id"] == tiny["eos_token_id"]
    assert (made / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()
    assert json.loads((write_model_dir("llama-3.1-8b", tmp_path / "n", tiny_model) / "config.json").read_text())[
        "vocab_size"] == 128256
    assert set(SHAPES) >= {"llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"}


def test_test_servers_take_the_settings_given_for_all_of_them(clean_env):
    from server.settings import Settings

    given = {"model": "/models/m", "max_model_len": 1024, "engine_args": {"load_format": "dummy"},
             "enforce_eager": False}
    env = server_settings_env(json.dumps(given))
    assert server_settings_env(None) == {}
    for name, value in env.items():
        clean_env.setenv(name, value)
    s = Settings()
    assert (s.model, s.max_model_len, s.engine_args, s.enforce_eager) == ("/models/m", 1024, {"load_format": "dummy"},
                                                                          False)


def test_the_benchmark_gives_both_servers_the_same_engine(tmp_path, monkeypatch, clean_env):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from server import cli

    ours = dummy_weights.llamaserve_argv(tmp_path, 8001)
    theirs = dummy_weights.vllm_argv(tmp_path, 8002)
    seen = {}
    monkeypatch.setattr(cli, "serve", lambda settings: seen.setdefault("s", settings))
    cli.main(ours[3:])  # after `python -m server.cli`
    settings = seen["s"]
    vllm_args = AsyncEngineArgs.from_cli_args(make_arg_parser(FlexibleArgumentParser()).parse_args(theirs[3:]))
    assert vllm_args.model == settings.model == str(tmp_path)
    assert vllm_args.served_model_name in (settings.served_model_name, [settings.served_model_name])
    assert vllm_args.max_model_len == settings.max_model_len
    assert vllm_args.load_format == settings.engine_args["load_format"] == "dummy"
    assert not settings.enforce_eager and not vllm_args.enforce_eager
    assert (vllm_args.generation_config, vllm_args.max_logprobs) == ("vllm", 32)
