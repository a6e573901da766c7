"""The research harness beside davpt_seg: benchmarks, the study runner and its reports, the
guidance-gradient analysis, synthetic data, the markdown helper, and what every entry point
runs first. It imports davpt_seg; davpt_seg never imports it. Not installed: tools/ and
tests/ find it from the repository root.
"""
