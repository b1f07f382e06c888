"""``python -m refcocog_tools`` is the same as the ``refcocog-tools`` command."""

from refcocog_tools.cli.main import main

raise SystemExit(main())
