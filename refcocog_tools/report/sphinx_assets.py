"""A Sphinx extension of the book: each page's scripts listed once.

sphinx-thebe and sphinx-togglebutton add inline scripts after the HTML builder has read its
script list, and Sphinx 7 then lists those twice on every page; the second copy of
``const THEBE_JS_URL = ...`` is a console error ("Identifier has already been declared"),
which ``make book-check`` rightly reports. Equal scripts (same file or body, priority and
attributes; an inline script's file name is ``None`` in one copy and ``""`` in the other, so
both count as none) are kept once, in their first place.
"""

from __future__ import annotations

from typing import Any


def _script_key(script: Any) -> Any:
    if isinstance(script, str):
        return script
    attributes = getattr(script, "attributes", {})
    return (getattr(script, "filename", None) or "", getattr(script, "priority", 500),
            tuple(sorted(attributes.items())))


def unique_scripts(scripts: list[Any]) -> list[Any]:
    """``scripts`` without repeats, in order (Sphinx's script assets or plain strings)."""
    seen: set[Any] = set()
    kept = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _dedupe(app: Any, pagename: str, templatename: str, context: dict[str, Any],
            doctree: Any) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(context["script_files"])


def setup(app: Any) -> dict[str, Any]:
    # Late (priority 900): after the themes and extensions have added their page scripts.
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
