"""Visual prompts: the Pillow reference renderer and the batched tensor renderer
(crops, markers, blurred / grayscale backgrounds) that is tested against it.

May import: ``core``.
"""
