import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import rap_stages  # noqa: E402  (test stages; shipped to Ray workers by value, so workers need not import them)
from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(rap_stages)

pytest_plugins = ["curator_exec_core.testing.fixtures"]
