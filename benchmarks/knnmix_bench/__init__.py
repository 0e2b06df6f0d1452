"""The benchmark harness behind ``benchmarks/run.py``: tiers, the references (cleanlab's confident learning, the
clean-label oracle), the tuned protocol, the runner and its report. Not part of the installed package."""
