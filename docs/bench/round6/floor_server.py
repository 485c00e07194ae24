"""The floor: the least API-process CPU a server built on uvicorn and vLLM's AsyncLLM can spend on a stream.

A raw ASGI app, no framework, no middleware, no validation, no deadline, no sse-starlette: it reads the request,
applies the chat template, and sends one SSE frame per engine output (one orjson dump each), on the same engine,
with the same engine options, as `llamaserve serve` on the tiny model. Everything it spends is spent by vLLM's
output path (AsyncLLM, OutputProcessor, detokeniser, stat loggers, ZMQ) and uvicorn's HTTP path, which any server
of this shape pays. Round six of docs/BENCHMARKS.md compares it with both servers.

    .venv/bin/python docs/bench/round6/floor_server.py PORT MODEL_CACHE_DIR
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import orjson
import uvicorn
from vllm.inputs.engine import tokens_input
from vllm.sampling_params import RequestOutputKind, SamplingParams

from engine.core import LlamaEngine, cache_vllm_environment
from server.app import engine_options
from server.settings import Settings


def make_app(cache_dir: Path):
    engine: LlamaEngine | None = None

    async def app(scope, receive, send):
        nonlocal engine
        if scope["type"] == "lifespan":  # the engine starts as llamaserve's does: in a thread, the loop running
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    engine = await asyncio.to_thread(LlamaEngine.start, engine_options(Settings(model_cache_dir=cache_dir)))
                    cache_vllm_environment()
                else:
                    engine.shutdown()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        req = orjson.loads(body)
        ids = await engine.encode_chat(req["messages"])
        params = SamplingParams(max_tokens=req["max_tokens"], temperature=req.get("temperature", 1.0),
                                ignore_eos=req.get("ignore_eos", False), output_kind=RequestOutputKind.DELTA,
                                skip_clone=True)
        rid = uuid.uuid4().hex
        head = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": "m"}
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        tokens = 0
        async for out in engine._llm.generate(tokens_input(ids), params, rid):
            c = out.outputs[0]
            tokens += len(c.token_ids)
            chunk = {**head, "choices": [{"index": 0, "delta": {"content": c.text}, "finish_reason": c.finish_reason}]}
            if out.finished:
                chunk["usage"] = {"prompt_tokens": len(ids), "completion_tokens": tokens}
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def main() -> None:
    port, cache_dir = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(make_app(cache_dir), host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
