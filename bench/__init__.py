"""Benchmarks of warranty-bot (not tests): `python -m bench`, results and method in docs/performance.md."""
