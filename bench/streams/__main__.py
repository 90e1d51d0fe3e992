"""`python -m bench.streams`: streams, soak and the N-process row (see docs/performance.md)."""

import sys

from bench.streams.run import main

sys.exit(main())
