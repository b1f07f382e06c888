"""Proposals: the candidate boxes a method chooses from (ground truth, YOLO, detection files).

May import: ``models``, ``prompts``, ``data``, ``core``.
"""
