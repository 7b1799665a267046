"""`python -m minigpt` is the `minigpt` command (torchrun launches it this way)."""

import sys

from minigpt.cli import main

sys.exit(main())
