"""``python -m sklearn_nlica``: the ``nlica`` command."""

import sys

from ._cli import main

sys.exit(main())
