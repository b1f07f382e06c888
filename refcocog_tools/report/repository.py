"""The repository the book's pages link to: its URL, its branch and the build's commit as a
link (``_config.yml``'s ``repository``, else the checkout's ``origin`` remote)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def repository_url(root: Path) -> str:
    """The repository the pages link to: ``repository.url`` of ``_config.yml``, else the
    checkout's ``origin`` remote when it is an http(s) URL, else "" (no repository links)."""
    url = str(_repository_config(root).get("url") or "")
    if not url:
        try:
            url = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root,
                                 capture_output=True, text=True, timeout=5,
                                 check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            url = ""
    return url.removesuffix(".git").rstrip("/") if url.startswith(("https://", "http://")) else ""


def _repository_config(root: Path) -> dict[str, Any]:
    """``repository`` of the book's ``_config.yml`` ({} without one)."""
    import yaml

    path = root / "_config.yml"
    config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return (config or {}).get("repository") or {}


def repository_branch(root: Path) -> str:
    """The branch the pages' source links point into (``repository.branch``, else main)."""
    return str(_repository_config(root).get("branch") or "main")


def commit_text(root: Path, commit: str | None) -> str:
    """The build's commit for the build page: a link to ``<repository>/commit/<sha>`` when a
    repository is configured, else the plain hash."""
    if not commit:
        return "`unknown (not a git checkout)`"
    url = repository_url(root)
    return f"[`{commit}`]({url}/commit/{commit})" if url else f"`{commit}`"
