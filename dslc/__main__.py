"""`python -m dslc ...`: the same as the `dslc` command."""
import sys

from .cli import main

sys.exit(main())
