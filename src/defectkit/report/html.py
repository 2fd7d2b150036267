"""HTML building blocks and the page shell: one file with its stylesheet inside, nothing fetched.

Every text that reaches the page goes through :func:`esc` (or :func:`fmt`, which escapes),
so a file name or a config value can never break the markup."""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any, Iterable

from ..charts import CHART_CSS

CSS = CHART_CSS + """
:root { --ink: #1a202c; --muted: #5a6474; --line: #d9dee6; --band: #f4f6f9; --accent: #2b6cb0; --bad: #c53030; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #fff; }
header { padding: 20px 32px 12px; border-bottom: 1px solid var(--line); background: var(--band); }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: var(--muted); }
nav { margin-top: 8px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
main { padding: 8px 32px 40px; max-width: 1400px; }
h2 { margin: 28px 0 10px; font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { margin: 20px 0 8px; font-size: 16px; }
h4 { margin: 14px 0 6px; font-size: 14px; }
p.note { margin: 8px 0; padding: 6px 10px; border-left: 3px solid #d69e2e; background: #fffaf0; }
p.hint { margin: 4px 0 10px; color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--band); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.combined td, tr.combined th { font-weight: 600; border-top: 2px solid var(--ink); }
code { font-size: 12px; color: var(--muted); }
pre { background: var(--band); padding: 10px; overflow: auto; font-size: 12px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 12px; max-width: 380px; }
.gallery { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
/* A card is as wide as its pictures at their shown size (the img width/height attributes),
   at most the gallery's width; the caption wraps within it and adds no width of its own
   (width 0, min-width 100%). In a narrower card the pictures wrap, then shrink in proportion. */
.card { flex: 0 1 auto; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; min-width: min(240px, 100%); max-width: 100%; }
.card .pictures { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.card img { flex: 0 1 auto; min-width: 0; max-width: 100%; height: auto; image-rendering: auto; display: block; background: var(--band); }
.card .missing { height: 240px; width: 120px; max-width: 100%; display: flex; align-items: center; justify-content: center; background: var(--band); color: var(--muted); font-size: 12px; text-align: center; }
.card figcaption { margin-top: 4px; color: var(--ink); width: 0; min-width: 100%; }
.card .name { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.card .card-note { color: var(--bad); font-size: 12px; word-break: break-all; }
details { margin: 12px 0; }
details > summary { cursor: pointer; font-weight: 600; }
details.fold { border: 1px solid var(--line); border-radius: 6px; padding: 4px 16px 12px; }
details.fold > summary { font-size: 17px; padding: 6px 0; }
.confusion td { text-align: center; min-width: 90px; font-variant-numeric: tabular-nums; }
.confusion td.hit { background: #f0fff4; }
.confusion td.miss { background: #fff5f5; }
"""


def esc(text: Any) -> str:
    return escape(str(text), quote=True)


def fmt(value: Any) -> str:
    """A value as the tables show it, escaped: 4 decimals, or 3 significant digits when small."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–" if math.isnan(value) else esc(value)
        return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return " × ".join(fmt(v) for v in value) if all(isinstance(v, int) for v in value) else ", ".join(fmt(v) for v in value)
    return esc(value)


def anchor(*parts: str) -> str:
    """An element id from names (a fold's folder name, a section): letters, digits, - and _."""
    cleaned = (re.sub(r"[^A-Za-z0-9_-]+", "-", p).strip("-") for p in parts)
    return "-".join(p for p in cleaned if p) or "top"


def heading(level: int, text: str, id: str | None = None) -> str:
    ident = f' id="{esc(id)}"' if id else ""
    return f"<h{level}{ident}>{esc(text)}</h{level}>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def hint(text: str) -> str:
    return f'<p class="hint">{esc(text)}</p>'


NUMERIC = ' class="num"'


def table(header: Iterable[str], rows: Iterable[str], numeric: Iterable[int] = (), cls: str = "") -> str:
    """``rows`` are ready ``<tr>`` strings (cells need attributes); the header is escaped here."""
    numeric = set(numeric)
    head = "".join(f'<th{NUMERIC if i in numeric else ""} scope="col">{esc(h)}</th>' for i, h in enumerate(header))
    klass = f' class="{esc(cls)}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def row(cells: Iterable[str], header: str | None = None, attrs: str = "") -> str:
    """A table row of ready cells, with an optional escaped row header."""
    th = f'<th scope="row">{esc(header)}</th>' if header is not None else ""
    return f"<tr{attrs}>{th}{''.join(cells)}</tr>"


def num(value: Any, key: str | None = None) -> str:
    data = f' data-key="{esc(key)}"' if key else ""
    return f'<td class="num"{data}>{fmt(value)}</td>'


def text(value: Any) -> str:
    return f"<td>{fmt(value)}</td>"


def figure(svg: str, caption: str | None = None) -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="plot">{svg}{cap}</figure>'


def side_by_side(*blocks: str) -> str:
    return f'<div class="row">{"".join(b for b in blocks if b)}</div>'


def details(summary: str, body: str, open: bool = False, cls: str = "", id: str | None = None) -> str:
    attrs = (f' class="{esc(cls)}"' if cls else "") + (f' id="{esc(id)}"' if id else "") + (" open" if open else "")
    return f"<details{attrs}><summary>{esc(summary)}</summary>{body}</details>"


def page(title: str, subtitle: str, links: list[tuple[str, str]], body: str) -> str:
    nav = "".join(f'<a href="#{esc(target)}">{esc(label)}</a>' for target, label in links)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav></header>\n"
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
