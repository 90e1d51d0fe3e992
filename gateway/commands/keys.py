"""`llm-gateway keys create|ls|revoke`: inference API keys."""

import argparse
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from gateway.commands._http import Gateway
from gateway.commands._output import emit_json, note, table, when


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `keys` command."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")

    create = verbs.add_parser(
        "create",
        parents=[common],
        help="create a key (printed once, alone on stdout)",
        description="Create an API key. The key is printed once, alone on stdout, so "
        "KEY=$(llm-gateway keys create team-a) keeps it; what it is goes to stderr.",
    )
    create.add_argument("name", help="who the key is for")
    create.add_argument("--rpm", type=int, help="requests per minute allowed (all replicas)")
    create.add_argument("--max-concurrent", type=int, help="requests in progress allowed")
    create.add_argument("--tpm", type=int, help="tokens per minute allowed (all replicas)")
    create.add_argument("--tpd", type=int, help="tokens per UTC day allowed")
    create.add_argument("--budget", type=float, help="money per budget period (price table)")
    create.add_argument(
        "--budget-period", choices=("day", "week", "month"), help="of the budget (default month)"
    )
    create.set_defaults(run=create_key)

    ls = verbs.add_parser("ls", parents=[common], help="list keys (never the keys themselves)")
    ls.set_defaults(run=list_keys)

    revoke = verbs.add_parser("revoke", parents=[common], help="revoke a key by its id")
    revoke.add_argument("id", help="the key's id (llm-gateway keys ls)")
    revoke.set_defaults(run=revoke_key)


def create_key(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.rpm is not None:
        body["requests_per_minute"] = args.rpm
    for flag, field in (
        ("max_concurrent", "max_concurrent"),
        ("tpm", "tokens_per_minute"),
        ("tpd", "tokens_per_day"),
        ("budget", "budget"),
        ("budget_period", "budget_period"),
    ):
        if getattr(args, flag) is not None:
            body[field] = getattr(args, flag)
    answer = gateway.call("POST", "/api/server/keys", body=body)
    data = answer["data"]
    if args.json:
        emit_json(data)
        return 0
    print(data["key"])
    note(f"created API key {data['name']!r} (id {data['id']}); it is shown this once")
    return 0


def list_keys(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    keys = gateway.call("GET", "/api/server/keys")["data"]
    if args.json:
        emit_json(keys)
        return 0
    rows = [
        [
            k["id"],
            k["name"],
            when(k["created_at"]),
            k["requests_per_minute"],
            k["max_concurrent"],
            k.get("tokens_per_minute"),
            k.get("tokens_per_day"),
            (k.get("spend") or {}).get("tokens_today"),
            k.get("budget"),
            (k.get("spend") or {}).get("cost_this_period"),
        ]
        for k in sorted(keys, key=lambda k: k["created_at"])
    ]
    columns = ["ID", "NAME", "CREATED", "RPM", "CONCURRENT", "TPM", "TPD", "TODAY", "BUDGET"]
    table([*columns, "SPENT"], rows, empty="no API keys")
    return 0


def revoke_key(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    answer = gateway.call("DELETE", f"/api/server/keys/{quote(args.id, safe='')}")
    if args.json:
        emit_json(answer)
    else:
        print(answer["msg"])
    return 0
