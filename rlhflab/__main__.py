"""`python -m rlhflab` (and `accelerate launch -m rlhflab`) run the CLI."""

import sys

from rlhflab.cli import main

sys.exit(main())
