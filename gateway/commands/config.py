"""`llm-gateway config check FILE`: validate a config file, its [[workers]] included."""

import argparse
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.commands._http import ERROR, USAGE, Failed
from gateway.commands._output import emit_json, note
from gateway.settings import WorkersError, load_settings


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the `config` command."""
    config = commands.add_parser("config", help="check a config file")
    verbs = config.add_subparsers(dest="verb", required=True, metavar="VERB")
    check = verbs.add_parser(
        "check",
        parents=[common],
        help="validate FILE without starting the gateway",
        description="Read FILE as `llm-gateway serve --config FILE` would (GATEWAY_* variables "
        "and ${VAR} references from this environment) and name every problem. Exit 0 when "
        "valid, 1 when not, 2 when the file cannot be read.",
    )
    check.add_argument("file", type=Path)
    check.set_defaults(run=check_config, local=True)


def check_config(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path: Path = args.file
    problems: list[str] = []
    try:
        settings = load_settings(config_file=path, environ=environ)
    except OSError as exc:
        raise Failed(USAGE, f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        problems = [f"not valid TOML: {exc}"]
    except WorkersError as exc:
        problems = exc.problems
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            where = ".".join(str(part) for part in err["loc"]) or "settings"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    if problems:
        if args.json:
            emit_json({"file": str(path), "valid": False, "problems": problems})
        else:
            for problem in problems:
                note(f"{path}: {problem}")
        raise Failed(ERROR, f"{path} is not valid ({len(problems)} problem(s))")
    workers = [
        {"id": w.worker_id, "model_name": w.model_name, "req_url_template": w.req_url_template}
        for w in settings.workers
    ]
    if args.json:
        emit_json({"file": str(path), "valid": True, "problems": [], "workers": workers})
    else:
        print(f"{path}: valid; {len(workers)} worker(s) declared")
        for worker in workers:
            print(f"  {worker['model_name']}  {worker['req_url_template']}")
    return 0
