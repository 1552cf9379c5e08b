"""`python -m soli_hf.cli ...`: the `soli` command without the console script."""

import sys

from . import main

sys.exit(main())
