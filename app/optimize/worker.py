"""``python -m app.optimize.worker``: the optimisation step's worker process (see process.py)."""

from __future__ import annotations

import sys

from app.optimize.process import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
