"""`python -m testbed.cli.commands`: the same as the `cnlb` command."""

import sys

from testbed.cli.commands import main

sys.exit(main())
