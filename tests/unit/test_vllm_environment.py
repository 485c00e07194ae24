"""The server's engine start caches vLLM's environment variables (engine.core.cache_vllm_environment): vLLM reads
some of them per generated token, from os.environ unless cached."""

from __future__ import annotations

import vllm.envs

from server import app as app_module
from server.settings import Settings


def test_starting_the_engine_makes_vllm_read_its_environment_once(clean_env, tmp_path):
    started = object()
    clean_env.setattr(app_module.LlamaEngine, "start", classmethod(lambda cls, options: started))
    clean_env.setenv("VLLM_COMPUTE_NANS_IN_LOGITS", "0")
    vllm.envs.disable_envs_cache()
    try:
        assert vllm.envs.VLLM_COMPUTE_NANS_IN_LOGITS is False
        assert app_module.start_engine(Settings(model=str(tmp_path))) is started
        clean_env.setenv("VLLM_COMPUTE_NANS_IN_LOGITS", "1")
        assert vllm.envs.VLLM_COMPUTE_NANS_IN_LOGITS is False  # read at the start, not on this access
    finally:
        vllm.envs.disable_envs_cache()
