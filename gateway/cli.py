"""The `llm-gateway` command."""

import argparse
import asyncio
import gc
import logging
import os
import re
import sys
import tomllib
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from gateway import commands as client
from gateway.app import create_app, server_options
from gateway.metrics import MetricsConfigError
from gateway.settings import Settings, WorkersError, load_settings
from gateway.supervisor import CHILD_FLAG, processes_arg, read_child_settings, supervise
from registry import EmbeddedRedisError

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-gateway",
        description="One endpoint in front of many model servers. `serve` runs the gateway; "
        "the other commands talk to a running one (docs/cli.md).",
        epilog=client.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="address to listen on (GATEWAY_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (GATEWAY_PORT, default 8007)")
    serve.add_argument(
        "--redis-url",
        help="redis://, rediss:// or unix:// URL (GATEWAY_REDIS_URL); "
        "without one an embedded Redis is started",
    )
    serve.add_argument(
        "--data-dir", type=Path, help="data directory of the embedded Redis (GATEWAY_DATA_DIR)"
    )
    serve.add_argument("--config", type=Path, help="TOML settings file (GATEWAY_CONFIG)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING... (GATEWAY_LOG_LEVEL)")
    serve.add_argument(
        "--processes",
        type=processes_arg,
        help="gateway processes sharing the port: a number or 'auto', one per CPU "
        "(GATEWAY_PROCESSES, default 1)",
    )
    serve.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    client.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command."""
    args = _parser().parse_args(argv)
    if args.command != "serve":
        return client.run(args, os.environ)
    if args.child:
        # A process started by the supervisor: its settings are the parent's, already merged,
        # sent on stdin (secrets included, so never on the command line or in a file).
        try:
            settings = read_child_settings(sys.stdin.buffer.read())
        except ValidationError as exc:
            print(f"llm-gateway: invalid settings from the parent:\n{exc}", file=sys.stderr)
            return 2
        return serve(settings, reuse_port=True)
    cli = {
        "host": args.host,
        "port": args.port,
        "redis_url": args.redis_url,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "processes": args.processes,
    }
    try:
        settings = load_settings(cli, config_file=args.config)
    except ValidationError as exc:
        print(f"llm-gateway: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except WorkersError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 2
    except tomllib.TOMLDecodeError as exc:
        print(f"llm-gateway: the config file is not valid TOML: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"llm-gateway: cannot read the config file: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.processes > 1:
        return supervise(settings)
    return serve(settings)


def _raise_open_file_limit() -> None:
    # Every open stream holds two sockets (client and worker); a default soft limit of 1,024
    # would cap a process near 500 streams.
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            log.warning("open-file limit is %d; raise it (ulimit -n) for many streams", soft)


class MalformedRequestFilter(logging.Filter):
    """Rewrite aiohttp's log of a malformed request into one line without the request's bytes.

    aiohttp logs "Error handling request from <peer>" at ERROR with the parser's exception,
    whose message quotes the offending raw line: an Authorization header, secret and all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = _parse_error(record.exc_info[1] if record.exc_info else None)
        if exc is None:
            return True
        args = record.args
        peer = args[0] if isinstance(args, tuple) and args else "an unknown peer"
        record.msg = "malformed request from %s: %s"
        record.args = (peer, _reason(exc))
        record.exc_info = record.exc_text = record.stack_info = None
        if record.levelno > logging.INFO:  # a client's mistake, not the gateway's
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _parse_error(exc: BaseException | None) -> HttpProcessingError | None:
    """Return the parser's error in `exc`'s chain (a body error arrives wrapped), or None."""
    for _ in range(5):
        if exc is None or isinstance(exc, HttpProcessingError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: HttpProcessingError) -> str:
    # Parser messages put the request's bytes after a colon or in quotes ("Invalid header
    # value char:\n\n  b'...'", "Bad status line '...'"): keep only the words before them.
    words = re.split(r"[:'\"\n\\]", exc.message or "", maxsplit=1)[0].strip()[:100]
    name = type(exc).__name__
    return f"{words} ({name})" if words else name


def quiet_malformed_requests() -> None:
    """Keep raw request bytes out of the log: filter aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())


def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run one gateway process until SIGINT or SIGTERM."""
    _raise_open_file_limit()
    # Young collections every 10,000 allocations instead of 700: with 1,000 open streams the
    # default thresholds ran full collections often enough to hold chunks back 20-50 ms; with
    # these, chunks over 10 ms fell from ~1% to ~0.05% at the same memory (bench/streams).
    gc.set_threshold(10_000, 20, 20)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_malformed_requests()
    # The access log is one JSON document per line, with nothing around it.
    access = logging.getLogger("gateway.access")
    access_handler = logging.StreamHandler()
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(access_handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is installed where the platform has it
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = create_app(settings)
    except MetricsConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            # A client that goes away cancels its handler, which closes the worker request.
            handler_cancellation=True,
            backlog=1024,
            reuse_port=reuse_port or None,
            print=lambda _: log.info(
                "llm-gateway (pid %d) listening on http://%s:%d",
                os.getpid(),
                settings.host,
                settings.port,
            ),
            loop=loop,
            **server_options(settings),
        )
    except EmbeddedRedisError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
