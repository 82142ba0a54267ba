"""The UI's pages: one HTML shell (head, navigation, scripts) around each page's own ``<main>``
(``static/{name}.html``, its script ``static/{name}.js``). The server links styles and scripts;
``remembrall report`` inlines them into one self-contained file."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    route: str
    charts: bool = False  # uses the vendored uPlot

    @property
    def styles(self) -> list[str]:
        return ["style.css"] + (["vendor/uPlot.min.css"] if self.charts else [])

    @property
    def scripts(self) -> list[str]:
        return ["common.js"] + (["vendor/uPlot.iife.min.js"] if self.charts else []) + [f"{self.name}.js"]


PAGES = (Page("overview", "Overview", "/"), Page("live", "Live", "/live"), Page("label", "Label", "/label"),
         Page("learning", "Learning", "/learning", charts=True))


def linked_style(name: str) -> str:
    return f'<link rel="stylesheet" href="/static/{name}">'


def linked_script(name: str) -> str:
    return f'<script src="/static/{name}"></script>'


def navigation(current: Page) -> str:
    active = ' class="active"'
    return "".join(f'<a href="{p.route}"{active if p is current else ""}>{p.title}</a>' for p in PAGES)


def render(page: Page, *, style: Callable[[str], str] = linked_style, script: Callable[[str], str] = linked_script,
           title: str | None = None, nav: str | None = None, status: str = '<span class="pulse" id="pulse">connecting…</span>',
           preamble: str = "") -> str:
    """The whole document of ``page``. ``title``/``nav``/``status`` replace the defaults (escaped
    by the caller); ``preamble`` goes before the scripts (the report's inlined data)."""
    head = "\n".join(style(name) for name in page.styles)
    body = (STATIC / f"{page.name}.html").read_text(encoding="utf-8").rstrip()
    scripts = "\n".join(script(name) for name in page.scripts)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title or "remembrall · " + html.escape(page.title)}</title>
{head}
</head>
<body data-page="{page.name}">
<header><span class="brand">remembrall</span><nav>{navigation(page) if nav is None else nav}</nav>{status}</header>
{body}
{preamble}{scripts}
</body>
</html>
"""
