"""Benchmarks (not run in CI): ``make bench`` or ``python -m bench``. Each prints its figures and
the ratios measured side by side in one run."""
