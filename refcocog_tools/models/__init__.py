"""Models: CLIP and YOLO loading (offline, never running code), the embedded untrained
checkpoints, and the embedding caches kept on disk.

May import: ``prompts``, ``data``, ``core``.
"""
