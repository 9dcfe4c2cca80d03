"""Small HTML builders for the report; every piece of text passes through ``html.escape``.

Images are embedded as ``data:`` URIs and the style sheet is inline, so the page
references nothing outside itself and works offline. The page uses no script.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1300px; padding: 0 1.5rem 3rem; color: #1f2328; }
h1 { margin-top: 1.5rem; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; margin-top: 2.5rem; }
h3 { margin-top: 1.8rem; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
img { max-width: 100%; height: auto; display: block; margin: .6rem 0; }
.note { color: #656d76; font-style: italic; }
section.run { border-top: 1px solid #d0d7de; }
"""


def text(value: object) -> str:
    """Escaped text of any value."""
    return html.escape(str(value))


def paragraph(content: str, css_class: str | None = None) -> str:
    """A <p> of escaped text."""
    attr = f' class="{text(css_class)}"' if css_class else ""
    return f"<p{attr}>{text(content)}</p>"


def note(content: str) -> str:
    """A de-emphasised remark, e.g. why a section is empty."""
    return paragraph(content, "note")


def image(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{text(alt)}">'


def table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A <table> with one header row; cells are escaped text."""
    head = "".join(f"<th>{text(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{text(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(section_id: str, title: str, body: str, level: int = 2, css_class: str | None = None) -> str:
    """A <section> with an id (for links and tests) and a heading of ``level``."""
    attr = f' class="{text(css_class)}"' if css_class else ""
    return f'<section id="{text(section_id)}"{attr}><h{level}>{text(title)}</h{level}>{body}</section>'


def link_list(links: Sequence[tuple[str, str]]) -> str:
    """A <nav> of in-page links, given (section id, label) pairs."""
    return "<nav>" + "".join(f'<a href="#{text(target)}">{text(label)}</a>' for target, label in links) + "</nav>"


def page(title: str, body: str) -> str:
    """A complete HTML5 document with the inline style sheet."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{text(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{text(title)}</h1>{body}</body></html>\n"
    )
