"""`python -m cli ARGS...`: the `allocator` command."""

import sys

from cli.entry import main

sys.exit(main())
