"""curator-exec benchmark harness (``python benchmarks/run.py local ...``); see README.md."""
