"""`python -m bench.scale`: registration, start-up, memory, picks, load and convergence."""

import sys

from bench.scale.run import main

sys.exit(main())
