"""Benchmarks: each path measured side by side with its baseline in one run (`make bench`).

Not timed tests: nothing here is collected by pytest. Results go to `docs/BENCHMARKS.md`.
"""
