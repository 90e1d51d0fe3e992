"""`python -m bench.affinity`: what choosing a worker costs per request, by strategy and pool size.

In process, no network: a router loaded with one model of N workers, and per pick what a
request does on its way (an `Affinity` built from its messages, then `Pool.candidates`). The
messages are a chat's: a 2,000-character system prompt and a question, so `prefix` hashes
its full `prefix_chars` (1,024) every time. Each figure is the median of 7 runs, in CPU time
of this process (so other load on the machine counts little).
The end-to-end cost, HTTP included, is the `gateway-rr4` / `gateway-prefix4` rows of
`python -m bench`.
"""

import argparse
import statistics
import time

from bench.scale.pick import records
from bench.stack import MODEL
from gateway.affinity import Affinity
from gateway.router import Router
from registry import ModelRecord, ModelSettings

STRATEGIES = ("round_robin", "least_load", "prefix")
_REPETITIONS = 7
_PICKS = 20_000
MESSAGES = [
    {"role": "system", "content": "You are a careful assistant. " * 70},
    {"role": "user", "content": "What changed in the last release?"},
]


def pick_us(strategy: str, workers: int, picks: int = _PICKS) -> float:
    """Return the median CPU µs of one pick (affinity included) of `strategy` over `workers`."""
    router = Router()
    settings = ModelSettings.model_validate({"balancing": strategy})
    router.load(1, records(workers, 1), {}, [ModelRecord(name=MODEL, settings=settings)])
    pool = router.pool(MODEL)
    if pool is None:
        raise RuntimeError(f"the router has no pool for {MODEL!r}")
    runs = []
    for _ in range(_REPETITIONS):
        started = time.process_time()  # CPU time: other processes on the machine do not count
        for _ in range(picks):
            pool.candidates("chat", 3, affinity=Affinity(None, lambda: MESSAGES))
        runs.append((time.process_time() - started) * 1e6 / picks)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.affinity", description=__doc__)
    parser.add_argument("--sizes", default="4,16,64", help="pool sizes (default 4,16,64)")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    print(f"{'pool':>6}" + "".join(f"{name:>14}" for name in STRATEGIES) + "   (CPU µs per pick)")
    for size in sizes:
        cells = "".join(f"{pick_us(name, size):>14.2f}" for name in STRATEGIES)
        print(f"{size:>6}{cells}")


if __name__ == "__main__":
    main()
