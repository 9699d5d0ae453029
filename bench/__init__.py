"""Benchmarks: each module has ``main() -> None`` that prints its figures (``python -m bench``)."""
