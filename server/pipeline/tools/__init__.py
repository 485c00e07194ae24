"""Tool calling: what a request's tools mean for the prompt, the engine and the answer."""
