"""``python -m duogpt``: the same as the ``duogpt`` command."""

import sys

from duogpt.cli import main

sys.exit(main())
