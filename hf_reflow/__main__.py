"""`python -m hf_reflow ...` (what `accelerate launch -m hf_reflow ...` runs)."""

import sys

from hf_reflow.cli import main

sys.exit(main())
