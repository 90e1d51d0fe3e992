"""`llm-gateway workers ls|show|add|rm` and `llm-gateway models ls`."""

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.commands._http import ERROR, USAGE, Failed, Gateway
from gateway.commands._output import emit_json, fields, table, when
from gateway.declared import expand_references

Record = dict[str, Any]


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `workers` and `models` commands."""
    workers = commands.add_parser("workers", help="list, show, add and remove workers")
    verbs = workers.add_subparsers(dest="verb", required=True, metavar="VERB")

    ls = verbs.add_parser("ls", parents=[common], help="list workers and their health")
    ls.add_argument("--model", help="only the workers of this model")
    ls.set_defaults(run=list_workers)

    show = verbs.add_parser("show", parents=[common], help="show one worker's record")
    show.add_argument("worker", nargs="+", metavar="ID | MODEL URL", help="a worker id or identity")
    show.set_defaults(run=show_worker)

    add = verbs.add_parser(
        "add",
        parents=[common],
        help="register a worker",
        description="Register a worker: the fields of POST /api/server/register as flags, or "
        "a JSON file of that body (--from; ${VAR} references are expanded from the environment, "
        "which keeps secrets off the command line). Flags override the file.",
    )
    add.add_argument("model", nargs="?", help="model_name clients ask for")
    add.add_argument(
        "worker_url", nargs="?", metavar="URL", help="req_url_template (a preset's base URL)"
    )
    add.add_argument("--from", dest="source", metavar="FILE", help="JSON body; - reads stdin")
    add.add_argument("--preset", help="openai, ollama... (GET /api/server/presets)")
    add.add_argument("--upstream-model", help="the name the worker itself knows the model by")
    add.add_argument("--body", metavar="JSON", help="the JSON body with placeholders")
    add.add_argument("--extract", dest="response_extract", metavar="PATH", help="response_extract")
    add.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    add.add_argument("--req-type", choices=["POST", "GET"], help="default POST")
    add.add_argument("--stream", dest="is_stream", action="store_true", default=None)
    add.add_argument("--stream-format", choices=["sse", "ndjson"])
    add.add_argument("--stream-extract", metavar="PATH")
    add.add_argument("--health-url", metavar="URL")
    add.add_argument("--weight", type=int)
    add.add_argument("--max-concurrency", type=int)
    add.add_argument("--timeout-s", type=float, help="the worker's own timeout (default 60)")
    add.add_argument("--ttl-s", type=float, help="needs heartbeats within this many seconds")
    add.add_argument("--owner")
    add.add_argument("--replace", action="store_true", default=None, help="replace it if present")
    add.set_defaults(run=add_worker)

    rm = verbs.add_parser("rm", parents=[common], help="take a worker offline")
    rm.add_argument("worker", nargs="+", metavar="ID | MODEL URL", help="a worker id or identity")
    rm.set_defaults(run=remove_worker)

    models = commands.add_parser("models", help="list models")
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")
    mls = verbs.add_parser("ls", parents=[common], help="models with their worker counts")
    mls.set_defaults(run=list_models)


def fetch(gateway: Gateway, model: str | None = None) -> list[Record]:
    """Every worker the gateway lists (of one model), with health and stats."""
    path = "/api/server/workers" + (f"?model_name={quote(model, safe='')}" if model else "")
    data: list[Record] = gateway.call("GET", path)["data"]
    return data


def list_workers(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    listed = fetch(gateway, args.model)
    if args.json:
        emit_json(listed)
        return 0
    rows = [
        [
            w["model_name"],
            _state(w),
            w["req_url_template"],
            w["stats"]["in_flight"],
            w["stats"]["successes"],
            w["stats"]["failures"],
            "file" if w.get("managed_by") else "api",
            w["id"],
        ]
        for w in listed
    ]
    headers = ["MODEL", "STATE", "URL", "IN-FLIGHT", "OK", "FAILED", "FROM", "ID"]
    table(headers, rows, empty="no workers registered")
    return 0


def show_worker(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    record = _find(gateway, args.worker)
    if args.json:
        emit_json(record)
        return 0
    health, stats = record.pop("health"), record.pop("stats")
    pairs = [(n, when(v) if n == "registered_at" else v) for n, v in record.items()]
    pairs.append(("state", _state({"health": health})))
    if health.get("probe_since"):
        pairs.append(("probe", f"{health['probe']} since {when(health['probe_since'])}"))
    if health.get("probe_reason"):
        pairs.append(("probe_reason", health["probe_reason"]))
    pairs.extend((name, value) for name, value in stats.items() if name != "last_error_at")
    if stats.get("last_error_at"):
        pairs.append(("last_error_at", when(stats["last_error_at"])))
    fields(pairs)
    return 0


def add_worker(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    body = _load(args.source, environ) if args.source else {}
    given = {
        "model_name": args.model,
        "req_url_template": args.worker_url,
        "preset": args.preset,
        "upstream_model": args.upstream_model,
        "response_extract": args.response_extract,
        "req_type": args.req_type,
        "is_stream": args.is_stream,
        "stream_format": args.stream_format,
        "stream_extract": args.stream_extract,
        "health_url": args.health_url,
        "weight": args.weight,
        "max_concurrency": args.max_concurrency,
        "timeout_s": args.timeout_s,
        "ttl_s": args.ttl_s,
        "owner": args.owner,
        "replace": args.replace,
    }
    body.update({name: value for name, value in given.items() if value is not None})
    if args.body is not None:
        try:
            body["body"] = json.loads(args.body)
        except ValueError as exc:
            raise Failed(USAGE, f"--body is not JSON: {exc}") from None
    if args.header:
        headers = dict(body.get("header") or {})
        for item in args.header:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise Failed(USAGE, f"--header {name or item!r}: write it as NAME=VALUE")
            headers[name.strip()] = value
        body["header"] = headers
    for required in ("model_name", "req_url_template"):
        if not body.get(required):
            raise Failed(USAGE, f"{required} is missing: give MODEL and URL, or --from FILE")
    answer = gateway.call("POST", "/api/server/register", body=body)
    if args.json:
        emit_json(answer)
    else:
        print(f"{answer['msg']} (id {answer.get('id', '-')})")
    return 0


def remove_worker(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    record = _find(gateway, args.worker)
    key = {"model_name": record["model_name"], "req_url_template": record["req_url_template"]}
    answer = gateway.call("POST", "/api/server/offline", body=key)
    if args.json:
        emit_json(answer)
    else:
        print(answer["msg"])
    return 0


def list_models(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    models = summarise(fetch(gateway))
    if args.json:
        emit_json(models)
        return 0
    rows = [[m["model"], m["workers"], m["available"], m["down"], m["in_flight"]] for m in models]
    headers = ["MODEL", "WORKERS", "AVAILABLE", "DOWN", "IN-FLIGHT"]
    table(headers, rows, empty="no models registered")
    return 0


def available(worker: Record) -> bool:
    """Whether the worker takes requests: up, or not probed yet (neither down nor ejected)."""
    return worker["health"]["state"] in ("up", "unknown")


def summarise(workers: list[Record]) -> list[Record]:
    """Per model: workers, how many available and down (or ejected), requests in flight."""
    models: dict[str, Record] = {}
    for worker in workers:
        name = worker["model_name"]
        entry = models.setdefault(
            name, {"model": name, "workers": 0, "available": 0, "down": 0, "in_flight": 0}
        )
        entry["workers"] += 1
        entry["available" if available(worker) else "down"] += 1
        entry["in_flight"] += worker["stats"]["in_flight"]
    return sorted(models.values(), key=lambda m: m["model"])


def _state(worker: Record) -> str:
    health = worker["health"]
    state: str = health["state"]
    if state == "ejected":
        return f"ejected {health['ejected_for_s']:.0f}s"
    return state


def _find(gateway: Gateway, words: list[str]) -> Record:
    """The worker named by its id, or by MODEL URL."""
    if len(words) == 1:
        found = [w for w in fetch(gateway) if w["id"] == words[0]]
        what = f"id {words[0]}"
    elif len(words) == 2:
        found = [w for w in fetch(gateway, words[0]) if w["req_url_template"] == words[1]]
        what = f"model {words[0]!r} and URL {words[1]}"
    else:
        raise Failed(USAGE, "name a worker by its ID, or by MODEL URL")
    if not found:
        raise Failed(ERROR, f"no worker with {what}; llm-gateway workers ls lists them")
    return found[0]


def _load(source: str, environ: Mapping[str, str]) -> Record:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise Failed(USAGE, f"cannot read {source}: {exc}") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise Failed(USAGE, f"{source} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Failed(USAGE, f"{source} must hold one JSON object (the register body)")
    try:
        expanded: Record = expand_references(body, environ)
    except ValueError as exc:
        raise Failed(USAGE, f"{source}: {exc}") from None
    return expanded
