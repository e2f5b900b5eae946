"""`python -m testbed.cli`: the same as the `cnlb` command."""

import sys

from testbed.cli.main import main

sys.exit(main())
