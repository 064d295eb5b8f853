"""``python -m curator_exec_core.cli``: the ``curator-exec`` command (as ``python -m curator_exec_core``)."""

import sys

from curator_exec_core.cli import main

sys.exit(main())
