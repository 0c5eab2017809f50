"""``python -m hierarcaps``: the same as the ``hierarcaps`` command."""

import sys

from .cli import main

sys.exit(main())
