"""llamaserve vs vLLM's own OpenAI server on the same engine: `python -m bench.run [--quick]`."""
