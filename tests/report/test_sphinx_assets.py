"""The book's Sphinx extension lists each page script once."""

from __future__ import annotations

from sphinx.builders.html._assets import _JavaScript

from refcocog_tools.report.sphinx_assets import unique_scripts


def test_repeated_inline_scripts_are_kept_once_in_their_first_place() -> None:
    config = _JavaScript("", body='const THEBE_JS_URL = "x"')
    toggle = _JavaScript("togglebutton.js")
    # The copy Sphinx 7 lists a second time has None where the first has "" as file name.
    again = _JavaScript(None, body='const THEBE_JS_URL = "x"')
    scripts = [toggle, config, _JavaScript("other.js"), again]
    assert unique_scripts(scripts) == [toggle, config, _JavaScript("other.js")]
    # Two different bodies are two scripts.
    assert len(unique_scripts([config, _JavaScript("", body="let a = 1")])) == 2
