"""openai-clip, imported once without the warnings its own import raises.

openai-clip imports ``pkg_resources``, which warns on every import (the pin is in pyproject).
Every module of the package takes ``clip`` from here (``from .openai_clip import clip``), so
that warning filter is written once; ``clip.model`` is imported with it.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    import clip
    import clip.model

__all__ = ["clip"]
