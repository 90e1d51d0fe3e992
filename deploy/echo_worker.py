"""A tiny OpenAI-compatible model server that echoes the last user message (for demos).

python deploy/echo_worker.py --port 8000 --name echo-a
"""

import argparse
import asyncio
import json
import time

from aiohttp import web


def answer_words(name: str, body: dict[str, object]) -> list[str]:
    messages = body.get("messages")
    last = messages[-1].get("content", "") if isinstance(messages, list) and messages else ""
    words = f"[{name}] you said: {last}".split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def build_app(name: str) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        words = answer_words(name, body)
        base = {"id": "chatcmpl-echo", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return web.json_response({**base, "object": "chat.completion", "choices": [choice]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in [*words, None]:
            delta = {"content": word} if word is not None else {}
            finish = None if word is not None else "stop"
            chunk = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.05)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    web.run_app(build_app(args.name), host=args.host, port=args.port)
