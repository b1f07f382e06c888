"""``python -m refcocog_tools`` is the same as the ``refcocog-tools`` command."""

from .cli import main

raise SystemExit(main())
