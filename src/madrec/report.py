"""Self-contained HTML reports with inline SVG charts (no plotting dependency).

page = html_page("SID report", [("Code usage", bar_chart(...)), ("Metrics", table_html(...))])
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

_W, _H, _PAD = 640, 300, 48
_LEGEND = 220  # px right of the plot for the series names, so they never cover a curve
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _axis(y_max: float, y_label: str, x_label: str) -> list[str]:
    out = [
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - 10}" y2="{_H - _PAD}" stroke="#333"/>',
        f'<line x1="{_PAD}" y1="10" x2="{_PAD}" y2="{_H - _PAD}" stroke="#333"/>',
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle" font-size="12">{html.escape(x_label)}</text>',
        f'<text x="12" y="{_H / 2}" transform="rotate(-90 12 {_H / 2})" text-anchor="middle" font-size="12">'
        f"{html.escape(y_label)}</text>",
    ]
    for i in range(5):
        v = y_max * i / 4
        y = _H - _PAD - (_H - _PAD - 10) * i / 4
        out.append(f'<text x="{_PAD - 4}" y="{y + 4}" text-anchor="end" font-size="10">{v:.3g}</text>')
        out.append(f'<line x1="{_PAD}" y1="{y}" x2="{_W - 10}" y2="{y}" stroke="#eee"/>')
    return out


def _svg(parts: list[str], width: int = _W) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_H}" viewBox="0 0 {width} {_H}">{body}</svg>'
    )


def bar_chart(labels: Sequence[str], values: Sequence[float], y_label: str = "", x_label: str = "") -> str:
    """Vertical bars, one per label; returns an SVG string."""
    y_max = max([float(v) for v in values] + [1e-12])
    n = max(len(values), 1)
    slot = (_W - 10 - _PAD) / n
    parts = _axis(y_max, y_label, x_label)
    for i, (label, v) in enumerate(zip(labels, values)):
        h = (_H - _PAD - 10) * float(v) / y_max
        x = _PAD + i * slot
        parts.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{_H - _PAD - h:.1f}" width="{slot * 0.8:.1f}" height="{h:.1f}" '
            f'fill="{_COLORS[0]}"><title>{html.escape(str(label))}: {float(v):.4g}</title></rect>'
        )
        if n <= 40 or i % max(n // 20, 1) == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{_H - _PAD + 14}" text-anchor="middle" font-size="10">'
                f"{html.escape(str(label))}</text>"
            )
    return _svg(parts)


def line_chart(x: Sequence[float], series: Mapping[str, Sequence[float]], y_label: str = "", x_label: str = "") -> str:
    """One polyline with markers per named series over shared x values; returns SVG."""
    return xy_chart({name: list(zip(x, vals)) for name, vals in series.items()}, y_label, x_label, ticks=x)


def xy_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    y_label: str = "",
    x_label: str = "",
    ticks: Sequence[float] | None = None,
) -> str:
    """One polyline with markers per named series of (x, y) points (each its own x); returns SVG."""
    points = [p for pts in series.values() for p in pts]
    y_max = max([float(y) for _, y in points] + [1e-12]) * 1.05
    x_min, x_max = min([x for x, _ in points] or [0.0]), max([x for x, _ in points] or [1.0])
    span = (x_max - x_min) or 1.0

    def px(v: float) -> float:
        return _PAD + 10 + (_W - 30 - _PAD) * (float(v) - x_min) / span

    def py(v: float) -> float:
        return _H - _PAD - (_H - _PAD - 10) * float(v) / y_max

    parts = _axis(y_max, y_label, x_label)
    if ticks is None:
        ticks = [x_min + span * i / 5 for i in range(6)]
    for xv in ticks:
        parts.append(f'<text x="{px(xv):.1f}" y="{_H - _PAD + 14}" text-anchor="middle" font-size="10">{xv:g}</text>')
    for k, (name, pts) in enumerate(series.items()):
        color = _COLORS[k % len(_COLORS)]
        line = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in pts)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        for a, b in pts:
            parts.append(
                f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{color}">'
                f"<title>{html.escape(name)} @ {a:g}: {float(b):.4g}</title></circle>"
            )
        y = 20 + 14 * k
        parts.append(f'<line x1="{_W}" y1="{y - 4}" x2="{_W + 14}" y2="{y - 4}" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{_W + 18}" y="{y}" font-size="11" fill="{color}">{html.escape(name)}</text>')
    return _svg(parts, _W + _LEGEND)


def table_html(rows: Sequence[Mapping[str, object]]) -> str:
    """An HTML table from a list of dicts sharing keys (floats shown with 4 significant digits)."""
    if not rows:
        return "<p>(empty)</p>"
    cols = list(rows[0])

    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A standalone HTML page: a title, then (heading, html-or-svg) sections in order."""
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:980px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "h2{margin-top:1.6em}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{content}")
    parts.append("</body></html>")
    return "\n".join(parts)
