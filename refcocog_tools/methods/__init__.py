"""Grounding methods: the interface the engine calls, the registry of every method by name,
and the methods themselves (floors, the crop baseline, colour encodings, Grad-CAM, red
circle; ``relations/`` and ``regressor/`` in folders of their own).

May import: ``proposals``, ``models``, ``prompts``, ``data``, ``core``.
"""
