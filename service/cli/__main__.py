"""``python -m service.cli``: the ``slimserve`` command."""

import sys

from service.cli.main import main

sys.exit(main())
