import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import rap_stages
from ray import cloudpickle

cloudpickle.register_pickle_by_value(rap_stages)

pytest_plugins = ["curator_exec_ray.testing"]
