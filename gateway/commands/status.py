"""`llm-gateway status`: is the gateway up and ready, and how healthy are its workers."""

import argparse
from collections.abc import Mapping
from typing import Any

from gateway.commands._http import AUTH, ERROR, Failed, Gateway
from gateway.commands._output import emit_json, fields, note, table, when
from gateway.commands.fleet import available, fetch, summarise


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `status` command."""
    status = commands.add_parser(
        "status",
        parents=[common],
        help="readiness and worker health at a glance",
        description="Read /healthz, /readyz and the worker list. Exit 0 when the gateway is "
        "ready, 1 when it is not (it says why), 3 when it cannot be reached, 4 when the admin "
        "token is missing or wrong (readiness is still printed).",
    )
    status.set_defaults(run=run_status)


def run_status(gateway: Gateway, args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    alive = gateway.call("GET", "/healthz", auth="none")
    # A 503 with the reason in its body is an answer, not a failure.
    ready = gateway.call("GET", "/readyz", auth="none", ok=(200, 503))
    report: dict[str, Any] = {"url": gateway.url, "pid": alive.get("pid"), "readyz": ready}
    denied: Failed | None = None
    try:
        workers = fetch(gateway)
    except Failed as exc:
        if exc.code != AUTH:
            raise
        denied, workers = exc, []
    report["models"] = summarise(workers)
    trouble = [w for w in workers if not available(w)]
    report["workers"] = {"total": len(workers), "down": len(trouble)}
    if args.json:
        emit_json({**report, "down": trouble} if denied is None else report)
    else:
        _print(report, trouble, ready, show_workers=denied is None)
    if denied is not None:
        raise denied
    return 0 if ready.get("ready") else ERROR


def _print(
    report: dict[str, Any],
    trouble: list[dict[str, Any]],
    ready: dict[str, Any],
    *,
    show_workers: bool,
) -> None:
    readiness = (
        f"yes (registry version {ready.get('registry_version')})"
        if ready.get("ready")
        else f"no: {ready.get('reason') or 'see /readyz'}"
    )
    pairs: list[tuple[str, Any]] = [
        ("gateway", f"{report['url']} (pid {report['pid']})"),
        ("ready", readiness),
    ]
    if show_workers:
        counts = report["workers"]
        pairs.append(("models", len(report["models"])))
        pairs.append(("workers", f"{counts['total']} ({counts['down']} down or ejected)"))
    fields(pairs)
    if not show_workers:
        return
    if report["models"]:
        print()
        models = report["models"]
        rows = [[m["model"], m["workers"], m["available"], m["down"]] for m in models]
        table(["MODEL", "WORKERS", "AVAILABLE", "DOWN"], rows, empty="")
    if trouble:
        print()
        rows = [[w["model_name"], w["req_url_template"], *_why(w)] for w in trouble]
        table(["MODEL", "URL", "STATE", "SINCE", "WHY"], rows, empty="")
        note(f"{len(trouble)} worker(s) down or ejected")


def _why(worker: dict[str, Any]) -> list[str]:
    health, stats = worker["health"], worker["stats"]
    state = health["state"]
    if state == "ejected":
        return [f"ejected {health['ejected_for_s']:.0f}s", "-", stats.get("last_error") or "-"]
    return [state, when(health.get("probe_since")), health.get("probe_reason") or "-"]
