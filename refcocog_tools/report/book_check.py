"""``make book-check``: every built page opened in headless Chromium at 1280x900, checked for
what a reader would trip over.

A page fails on

* **overflow**: a table, figure, image or code block (a cell's output too) wider than the
  content column, or whose content is wider than its own box (a code line cut off);
* **alt**: an ``img`` without alt text, or whose alt text is a file name or path;
* **plumbing**: a code cell whose input is shown on the page (not removed by ``remove-input``
  nor folded by ``hide-input``) and whose output holds no table, figure, image or markdown
  (only printed text, or nothing): its code is the machinery, not what the page shows;
* **console**: an error on the browser console, or an uncaught script error;
* **external**: a request to anything but a local file (a CDN script: the book must work
  offline);
* **tex**: raw TeX in the text (``\\(``, ``\\[``, ``$$``) once MathJax has typeset the page;
* **link**: an internal link to a missing file or a missing anchor.

Chromium is Debian's (``/usr/bin/chromium``, or ``$CHROMIUM``), driven by the ``playwright``
package; no browser is downloaded. ``python -m refcocog_tools.report.book_check [HTML_DIR]`` prints
one line per defect and exits 1 when there is any, 2 when no Chromium is found.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

VIEWPORT = {"width": 1280, "height": 900}
DEFAULT_HTML = Path("book") / "_build" / "html"
# Sphinx's own folders: assets, not pages.
_NOT_PAGES = {"_static", "_sources", "_downloads", "_images"}
INSTALL_HINT = ("no Chromium found: install it (Debian/Ubuntu: `apt-get install chromium`) or "
                "set CHROMIUM to its executable")

# Runs in the page; returns [kind, element, detail] triples. The content column is the
# article of sphinx-book-theme (else <main>, else <body>).
_PAGE_CHECKS = r"""
() => {
  const out = [];
  const describe = (el) => {
    let name = el.tagName.toLowerCase();
    if (el.id) name += '#' + el.id;
    else if (el.classList.length) name += '.' + [...el.classList].slice(0, 2).join('.');
    const text = (el.getAttribute('alt') || el.textContent || '').trim().replace(/\s+/g, ' ');
    return text ? `${name} "${text.slice(0, 60)}"` : name;
  };
  const column = document.querySelector('article.bd-article') || document.querySelector('main')
    || document.body;
  const width = column.clientWidth;
  const visible = (el) => {
    if (!el.getClientRects().length) return false;
    for (let p = el.parentElement; p; p = p.parentElement) {
      if (p.tagName === 'DETAILS' && !p.open && el.closest('summary') === null) return false;
    }
    return true;
  };
  for (const el of column.querySelectorAll(
      'table, figure, img, svg, pre, iframe')) {
    // The outermost box only (an image in its figure is one defect), no typeset maths.
    const outer = el.parentElement && el.parentElement.closest(
      'table, figure, pre, mjx-container');
    if (!visible(el) || outer) continue;
    const box = el.getBoundingClientRect().width;
    // Wider than the column, or content wider than its own box (a code line cut off in a
    // scrolling block, even inside an admonition narrower than the column).
    if (box > width + 1)
      out.push(['overflow', describe(el), `${box.toFixed(0)} px in a ${width} px column`]);
    else if (el.scrollWidth > el.clientWidth + 1 && el.clientWidth > 0)
      out.push(['overflow', describe(el), `content ${el.scrollWidth} px in a ` +
                `${el.clientWidth} px box`]);
  }
  for (const img of document.querySelectorAll('img')) {
    const alt = (img.getAttribute('alt') || '').trim();
    const file = /(^|\/)[^\s\/]+\.(png|jpe?g|gif|svg|webp)$/i.test(alt) || alt.includes('/');
    if (!alt || file) out.push(['alt', describe(img), alt ? 'alt text is a file name' :
                                'no alt text']);
  }
  for (const cell of column.querySelectorAll('div.cell')) {
    const input = cell.querySelector('div.cell_input');
    if (!input || !visible(input)) continue;
    const output = cell.querySelector('div.cell_output');
    const shows = output && output.querySelector(
      'table, img, svg, figure, p, ul, ol, h1, h2, h3, h4, .admonition, .output.text_html');
    if (!shows) out.push(['plumbing', describe(input), 'code shown with no table, figure ' +
                          'or markdown output']);
  }
  const skip = 'pre, code, script, style, textarea, mjx-container, .MathJax, .math';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip) || !visible(parent)) continue;
    const found = ['\\(', '\\[', '$$'].find((t) => node.textContent.includes(t));
    if (found) out.push(['tex', describe(parent), `raw TeX ${found} in the text`]);
  }
  const links = [...document.querySelectorAll('a[href]')].map((a) => a.getAttribute('href'));
  return {defects: out, links};
}
"""


@dataclass(frozen=True)
class Defect:
    page: str
    kind: str
    element: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: {self.kind}: {self.element}: {self.detail}"


def find_chromium() -> str | None:
    """``$CHROMIUM``, else Debian's chromium, else one on PATH; None when there is none."""
    candidates = [os.environ.get("CHROMIUM"), "/usr/bin/chromium",
                  *(shutil.which(n) for n in ("chromium", "chromium-browser"))]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def pages(html_dir: Path) -> list[Path]:
    """Every built page, Sphinx's asset folders left out."""
    return sorted(p for p in html_dir.rglob("*.html")
                  if not _NOT_PAGES & set(p.relative_to(html_dir).parts))


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


def _anchors(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        parser = _Ids()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = parser.ids
    return cache[path]


def broken_links(page: Path, hrefs: Sequence[str], html_dir: Path,
                 cache: dict[Path, set[str]]) -> list[tuple[str, str]]:
    """(href, why) for each internal link of ``page`` whose file or anchor is missing."""
    broken = []
    for href in dict.fromkeys(hrefs):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")):
            continue
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append((href, "no such file"))
        elif parts.fragment and target.suffix == ".html" and \
                unquote(parts.fragment) not in _anchors(target, cache):
            broken.append((href, f"no anchor #{parts.fragment} in {target.name}"))
    return broken


def _redirect(page: Path) -> str | None:
    """The target of a page that only redirects (``<meta http-equiv="refresh">``), else None."""
    found = re.search(r'<meta[^>]+http-equiv="refresh"[^>]+url=([^"\s>]+)',
                      page.read_text(encoding="utf-8", errors="replace"), flags=re.IGNORECASE)
    return found.group(1) if found else None


def check_book(html_dir: Path, chromium: str,
               screenshots: Path | None = None) -> list[Defect]:
    """Every defect of every page under ``html_dir``."""
    from playwright.sync_api import sync_playwright

    html_dir = html_dir.resolve()
    defects: list[Defect] = []
    anchors: dict[Path, set[str]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            for path in pages(html_dir):
                name = path.relative_to(html_dir).as_posix()
                redirect = _redirect(path)
                if redirect is not None:  # index.html: only its target is checked
                    defects += [Defect(name, "link", href, why) for href, why in
                                broken_links(path, [redirect], html_dir, anchors)]
                    continue
                found: list[tuple[str, str, str]] = []
                page = browser.new_page(viewport=VIEWPORT)
                page.on("console", lambda m, f=found: m.type == "error" and f.append(
                    ("console", "console", m.text[:200])))
                page.on("pageerror", lambda e, f=found: f.append(("console", "script",
                                                                  str(e)[:200])))
                page.on("request", lambda r, f=found: not r.url.startswith(("file:", "data:",
                                                                            "blob:", "about:"))
                        and f.append(("external", "request", r.url)))
                page.goto(path.as_uri(), wait_until="load")
                # MathJax typesets after load: raw TeX only counts once it has finished.
                page.evaluate("() => window.MathJax && MathJax.startup && MathJax.startup.promise"
                              " ? MathJax.startup.promise.then(() => true) : true")
                result = page.evaluate(_PAGE_CHECKS)
                found += [tuple(d) for d in result["defects"]]
                found += [("link", href, why)
                          for href, why in broken_links(path, result["links"], html_dir, anchors)]
                if screenshots is not None:
                    shot = screenshots / (name.replace("/", "__") + ".png")
                    shot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shot), full_page=True)
                page.close()
                defects += [Defect(name, *d) for d in dict.fromkeys(found)]
        finally:
            browser.close()
    return defects


