"""``python -m lmgraph``: the command line (see :mod:`lmgraph.cli`)."""

import sys

from .cli import main

sys.exit(main())
