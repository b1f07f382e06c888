"""The report: what a chapter calls (parameters, provenance, glue, figures), the study's
reported numbers, the chapters as files and the book build.

What a chapter calls is importable from here (``from refcocog_tools.report import
open_chapter, glue``). May import: ``toy``, ``engine`` and everything below it.
"""

from refcocog_tools.report.chapter import (
    glue,
    glue_figure,
    glue_verdict,
    open_chapter,
    show_figure,
)

__all__ = ["glue", "glue_figure", "glue_verdict", "open_chapter", "show_figure"]
