"""The method-neutral engine: a method over a split into one results document, the
metrics, the results contract and the throughput bench.

May import: ``methods``, ``proposals``, ``models``, ``prompts``, ``data``, ``core``.
"""
