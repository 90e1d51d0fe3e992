"""Run the gateway CLI under cProfile and write the stats when it exits.

`python -m bench.cprofile_gateway OUT.prof serve --port P ...`: the gateway exits cleanly on
SIGINT or SIGTERM (aiohttp's `run_app`), after which the stats are written to OUT.prof. Used
by `--profile` when py-spy cannot be had; only the main thread (the event loop) is profiled.
"""

import cProfile
import sys

from gateway.cli import main as gateway_main


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python -m bench.cprofile_gateway OUT.prof serve [gateway options]")
        return 2
    output, argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return gateway_main(argv)
    finally:
        profiler.disable()
        profiler.dump_stats(output)


if __name__ == "__main__":
    sys.exit(main())
