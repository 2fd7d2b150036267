"""``python -m defectkit`` (and ``torchrun -m defectkit train ...``) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
