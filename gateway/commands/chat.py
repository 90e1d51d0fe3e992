"""`llm-gateway chat MODEL PROMPT`: ask a model through the OpenAI-compatible route, streaming."""

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from gateway.commands._http import ERROR, USAGE, Failed, Gateway
from gateway.commands._output import emit_json

_PATH = "/v1/chat/completions"


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `chat` command."""
    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="send a prompt to a model and stream the answer",
        description="Send one prompt to MODEL (POST /v1/chat/completions) and print the answer "
        "as it streams. The API key comes from GATEWAY_API_KEY (or --api-key) when the gateway "
        "requires one. --json asks for the whole answer and prints the gateway's JSON.",
    )
    chat.add_argument("model", help="the model to ask (llm-gateway models ls)")
    chat.add_argument("prompt", nargs="?", default="-", help="the prompt; - or none reads stdin")
    chat.add_argument("--system", help="a system message before the prompt")
    chat.add_argument("--temperature", type=float)
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.set_defaults(run=run_chat)


def run_chat(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise Failed(USAGE, "the prompt is empty: give it as an argument or on stdin")
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    body: dict[str, Any] = {"model": args.model, "messages": messages}
    if args.temperature is not None:
        body["temperature"] = args.temperature
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.json or args.no_stream:
        answer = gateway.call("POST", _PATH, auth="inference", body={**body, "stream": False})
        if args.json:
            emit_json(answer)
        else:
            print(_text(answer.get("choices"), "message"))
        return 0
    with gateway.stream(_PATH, {**body, "stream": True}) as reply:
        done = False
        for line in reply.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                event = json.loads(data)
            except ValueError:
                continue
            error = event.get("error") if isinstance(event, dict) else None
            if error:
                message = error.get("message", error) if isinstance(error, dict) else error
                print()
                raise Failed(ERROR, f"the answer broke off: {message}")
            piece = _text(event.get("choices") if isinstance(event, dict) else None, "delta")
            if piece:
                sys.stdout.write(piece)
                sys.stdout.flush()
    print()
    if not done:
        raise Failed(ERROR, "the answer ended before its end marker: it may be cut short")
    return 0


def _text(choices: Any, part: str) -> str:
    """The text of the first choice's `message` or `delta`, or ""."""
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    content = (choices[0].get(part) or {}).get("content")
    return content if isinstance(content, str) else ""
