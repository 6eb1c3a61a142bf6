"""Small HTML building blocks shared by the dashboard and the comparison page.

Every piece of data goes through ``esc``; the pages carry no script and a Content-Security-Policy
that forbids any, so a run named ``<script>...`` is shown as text and could not run anyway.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 1280px;
       padding: 0 1rem; color: #212121; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td:not(:last-child) { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #555; } img { max-width: 100%; }
.verdict { padding: 1px 6px; border-radius: 3px; color: white; white-space: nowrap; }
.v-within { background: #2e7d32; } .v-smaller-drop { background: #ef6c00; }
.v-larger-drop { background: #c62828; } .v-opposite-sign { background: #6a1b9a; }
.v-inconclusive { background: #616161; } .v-no-expectation { background: #9e9e9e; }
.v-not-testable { background: #455a64; } .v-greyed { background: #bdbdbd; color: #424242; }
.verdict { white-space: normal; display: inline-block; max-width: 22rem; }
.moved { background: #fff3e0; font-weight: 600; }
.banner { background: #fff8e1; border: 1px solid #ffb300; padding: .5rem .8rem;
          font-weight: 600; }
.wrap td, .wrap th { white-space: normal; } .wrap { max-width: 100%; overflow-x: auto; }
ul.arms { margin: .3rem 0 .6rem; padding-left: 1.2rem; }
"""


def esc(value: object) -> str:
    """Text as HTML, quotes included (safe in element content and attribute values)."""
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    """A complete self-contained HTML document."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def figure_img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG ``<img>``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{data}'>"


def number(value: object, digits: int = 3, signed: bool = False) -> str:
    """A number for a table cell; '—' for missing values."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return "—" if value is None else str(value)
    if math.isnan(x):
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def interval(low: object, high: object, digits: int = 1) -> str:
    """``[low, high]`` or '—' when undefined."""
    if any(not isinstance(v, numbers.Real) or math.isnan(v) for v in (low, high)):
        return "—"
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def verdict_badge(verdict: str | None, greyed: str | None = None) -> str:
    """A coloured verdict label; ``greyed`` (a reason) shows it grey with the reason as a tip."""
    if not isinstance(verdict, str):
        return "—"
    kind = verdict.split(":", 1)[0]
    css = "v-" + re.sub(r"[^a-z]+", "-", kind.lower()).strip("-")
    if greyed:
        return f"<span class='verdict v-greyed' title='{esc(greyed)}'>{esc(verdict)}</span>"
    return f"<span class='verdict {css}'>{esc(verdict)}</span>"


def table(
    frame: pd.DataFrame,
    columns: dict[str, str],
    cells: dict[str, Callable[[pd.Series], str]] | None = None,
    row_class: Callable[[pd.Series], str] | None = None,
) -> str:
    """An HTML table of ``frame``: ``columns`` maps keys to headers; ``cells`` maps keys to
    functions of the row returning HTML (escape inside); other cells are escaped text."""
    cells = cells or {}
    head = "".join(f"<th>{esc(title)}</th>" for title in columns.values())
    body = []
    for _, row in frame.iterrows():
        tds = []
        for key in columns:
            if key in cells:
                tds.append(f"<td>{cells[key](row)}</td>")
            elif isinstance(row[key], numbers.Integral) and not isinstance(row[key], bool):
                tds.append(f"<td class='num'>{esc(row[key])}</td>")
            elif isinstance(row[key], numbers.Real):
                tds.append(f"<td class='num'>{esc(number(row[key]))}</td>")
            else:
                tds.append(f"<td>{esc('—' if _missing(row[key]) else row[key])}</td>")
        css = f" class='{esc(row_class(row))}'" if row_class and row_class(row) else ""
        body.append(f"<tr{css}>{''.join(tds)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def safe_dirname(name: str) -> str:
    """A study name usable as one path component."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def _missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
