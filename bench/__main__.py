"""`python -m bench`: measure the gateway against a bare aiohttp proxy and the upstream."""

import sys

from bench.run import main

sys.exit(main())
