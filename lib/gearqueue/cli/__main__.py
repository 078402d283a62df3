"""`python -m gearqueue.cli`: the same as the `gearqueue` command."""

import sys

from . import main

sys.exit(main())
