"""The toy world: a small CLIP trained here on the synthetic data, and every method run on it.

May import: ``engine`` and everything below it.
"""
