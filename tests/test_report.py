"""The HTML charts of the reports (madrec.report)."""

from __future__ import annotations

import re

from madrec import report


def test_a_charts_legend_sits_right_of_the_plot_and_never_over_a_curve():
    svg = report.line_chart([1, 2, 3], {"madrec Recall@K": [0.1, 0.2, 0.3], "most popular Recall@K": [0.0, 0.1, 0.1]})
    width = float(re.search(r'<svg [^>]*width="(\d+)"', svg).group(1))
    curve_x = [float(x) for pts in re.findall(r'points="([^"]+)"', svg) for x in re.findall(r"([\d.]+),", pts)]
    legend_x = [float(x) for x in re.findall(r'<text x="([\d.]+)"[^>]*fill="#', svg)]
    assert len(legend_x) == 2 and min(legend_x) > max(curve_x) and max(legend_x) < width
