pytest_plugins = ["curator_exec_ray.testing"]
