"""The side-by-side benchmark: tiers, the external confident-learning peer, the runner and its report.

``python benchmarks/run.py --tier quick`` is the entry point; see ``benchmarks/README.md``.
"""
