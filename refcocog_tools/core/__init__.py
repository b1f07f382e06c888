"""The ground floor: atomic file io, checksums, the cache folder, box coercion.

Imports nothing else of the package.
"""
