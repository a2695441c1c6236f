"""`python -m demo` (from the repository root)."""

import sys

from demo.cli import main

sys.exit(main())
