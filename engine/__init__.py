"""The only package that imports vLLM. It knows nothing about HTTP."""
