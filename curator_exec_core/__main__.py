"""``python -m curator_exec_core``: the ``curator-exec`` command."""

import sys

from curator_exec_core.cli import main

sys.exit(main())
