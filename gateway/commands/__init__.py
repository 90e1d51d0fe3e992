"""The client commands of `llm-gateway`: a running gateway's workers, models, keys and health.

Each command module adds its parsers; a command's `run(gateway, args, environ)` returns an
exit code or raises `Failed`, whose message goes to stderr (codes in `_http`).
"""

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from gateway.commands import chat, config, fleet, keys, status
from gateway.commands._http import ERROR, OK, Failed, Gateway, connection_options

EXIT_CODES = """exit codes of the client commands:
  0  done
  1  the gateway answered with an error, or what was asked for does not exist
  2  usage error (wrong arguments, a file that cannot be read)
  3  the gateway cannot be reached
  4  the gateway refused the credentials (admin token or API key)"""


def add_commands(commands: Any) -> None:
    """Add every client command to the `llm-gateway` subcommands."""
    common = connection_options()
    for module in (fleet, keys, chat, status, config):
        module.add_parsers(commands, common)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Run the client command `args` names; return its exit code."""
    try:
        if getattr(args, "local", False):
            code: int = args.run(args, environ)
            return code
        gateway = Gateway.from_args(args, environ)
        try:
            code = args.run(gateway, args, environ)
            return code
        finally:
            gateway.close()
    except Failed as exc:
        print(f"llm-gateway: {exc.message}", file=sys.stderr)
        return exc.code
    except (KeyError, TypeError) as exc:
        print(
            f"llm-gateway: the gateway's answer is not what this command expects ({exc!r}); "
            "is it an llm-gateway of the same version?",
            file=sys.stderr,
        )
        return ERROR
    except BrokenPipeError:
        # Whoever read stdout went away (| head): nothing more to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except KeyboardInterrupt:
        return 130


__all__ = ["EXIT_CODES", "add_commands", "run"]
