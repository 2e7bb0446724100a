"""``python -m lorakit.cli``: the same as the ``lorakit`` console script."""

import sys

from . import main

sys.exit(main())
