"""`python -m cumulus`: the `cumulus` command."""

import sys

from cumulus.cli import main

sys.exit(main())
