"""``python -m hierarcaps``: the same as the ``hierarcaps`` command."""

import sys

from .cli import run

if __name__ == "__main__":   # guarded: engines that spawn workers (vLLM) re-import the main module
    sys.exit(run())
