"""Benchmarks: run each as a module from the project root, e.g. ``python -m bench.quality``."""
