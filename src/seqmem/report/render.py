"""The drawing and page plumbing of the report and the sweep dashboard.

- `Canvas` (`CANVAS`): what a figure draws with: matplotlib figures in one layout, a colour
  per run (by curriculum), a legend placed outside the plotted area (it never covers data)
  or a "not measured" note, integer ticks on integer axes, and log axes only where the data
  span more than a decade (with plain tick labels: 32, 64, not 10^1.5);
- `svg_text`, `png_bytes`, `html_table`, `figure_section`: a figure as vector SVG and as a
  print-resolution PNG (`DPI`), a table of its numbers, and all three as one section of a
  page: the SVG embedded, its caption under it, the PNG written beside the page;
- `html_page`: a self-contained page (figures inline as SVG, no external resources) whose
  script records on <body> how many figures there are and how many drew something.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

COLORS = {"single": "#d62728", "multi": "#1f77b4", "sliding": "#2ca02c", "none": "#7f7f7f"}
#: The PNGs' resolution (print quality: at least 150 dpi).
DPI = 200
# SVG text stays text (searchable, sharp at any zoom); ids are stable between runs.
matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "seqmem",
                            "font.size": 9})


class Canvas:
    """Figures in the report's style (see the module docstring)."""

    def subplots(self, nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
                 squeeze: bool = True):
        """(figure, axes) as `plt.subplots`, laid out to fit (constrained layout)."""
        return plt.subplots(nrows, ncols, figsize=figsize, squeeze=squeeze,
                            layout="constrained")

    def color(self, entry, i: int) -> str:
        """The colour of run `entry`, the i-th drawn: its curriculum's, else matplotlib's Ci."""
        return COLORS.get(entry.summary.get("curriculum", ""), f"C{i}")

    def legend(self, ax, **kwargs) -> None:
        """A legend of the labelled artists, outside the axes on their right (so that it
        never covers data), or "not measured" on an empty panel."""
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**{"frameon": False, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0),
                         "borderaxespad": 0.0, "fontsize": 8, **kwargs})
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                    transform=ax.transAxes, color="#888")

    def integer_axis(self, ax, which: str = "x") -> None:
        """Integer ticks only on axis `which` ("x" or "y") of a count (N, epochs, units)."""
        axis = ax.xaxis if which == "x" else ax.yaxis
        axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))

    def auto_log(self, ax, values, which: str = "x", *, base: int = 10) -> bool:
        """Log scale on axis `which` if the positive `values` span more than a decade (True),
        with plain tick labels; a linear axis otherwise (False)."""
        v = np.asarray([x for x in values if x is not None and x > 0], dtype=float)
        if v.size == 0 or v.max() / v.min() <= 10:
            return False
        axis = ax.xaxis if which == "x" else ax.yaxis
        (ax.set_xscale if which == "x" else ax.set_yscale)("log", base=base)
        axis.set_major_locator(LogLocator(base=base, subs=(1.0,) if base == 2 else
                                          (1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
        return True


CANVAS = Canvas()


def png_bytes(fig, *, close: bool = True) -> bytes:
    """The figure as PNG (`DPI`, tight bounding box); the figure is closed unless told."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    if close:
        plt.close(fig)
    return buf.getvalue()


def svg_text(fig, *, close: bool = True) -> str:
    """The figure as an <svg> element to inline in HTML (no XML prolog, no namespace
    declarations, no metadata; it scales to its box); the figure is closed unless told."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    if close:
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    # inline in HTML, the parser gives <svg> and xlink:href their namespaces; the metadata
    # block (Dublin Core) names no resource the page needs
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    w = re.search(r'<svg[^>]*?\swidth="([\d.]+)pt"', svg)
    return re.sub(r'<svg', f"<svg class='figure' style='max-width:{w.group(1)}pt' "
                  if w else "<svg class='figure' ", svg, count=1)


def _points(ax) -> np.ndarray:
    """Display coordinates (n, 2) of what `ax` plots: line vertices, scatter offsets, the
    corners and centres of bars."""
    pts = [ln.get_transform().transform(ln.get_xydata()) for ln in ax.get_lines()
           if len(ln.get_xydata())]
    for c in ax.collections:
        off = c.get_offsets()
        if len(off):
            pts.append(c.get_offset_transform().transform(off))
    for p in ax.patches:
        x0, y0, x1, y1 = p.get_window_extent().extents
        pts.append(np.array([[x0, y0], [x1, y1], [x0, y1], [x1, y0],
                             [(x0 + x1) / 2, (y0 + y1) / 2]]))
    pts = [p for p in pts if np.ndim(p) == 2 and len(p)]
    out = np.concatenate(pts) if pts else np.zeros((0, 2))
    return out[np.isfinite(out).all(axis=1)]


def figure_checks(fig) -> dict[str, int]:
    """What can be wrong with a drawn figure, counted: plotted points under a legend
    (`legend_overlaps`) and panels that plot nothing (`empty_panels`: no line, marker, bar
    or image). The figure is drawn first, so legends have their final place."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [lg for lg in [*(ax.get_legend() for ax in fig.axes), *fig.legends] if lg]
    boxes = [lg.get_window_extent(renderer) for lg in legends]
    overlaps = empty = 0
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        pts = _points(ax)
        if not len(pts) and not ax.images:
            empty += 1
        for b in boxes:
            overlaps += int(np.sum((pts[:, 0] > b.x0) & (pts[:, 0] < b.x1)
                                   & (pts[:, 1] > b.y0) & (pts[:, 1] < b.y1)))
    return {"legend_overlaps": overlaps, "empty_panels": empty}


def html_table(header, rows) -> str:
    """An HTML table of `header` and `rows`, every cell escaped."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def figure_section(name: str, fig, header, rows, out_dir: Path, caption: str = "") -> str:
    """Write <out_dir>/<name>.png (`DPI`) and return its section: a heading, the figure as
    inline SVG with `caption` under it, and its numbers in a table beside it; the <figure>
    carries `figure_checks` as data attributes (data-legend-overlaps, data-empty-panels)."""
    (Path(out_dir) / f"{name}.png").write_bytes(png_bytes(fig, close=False))
    checks = figure_checks(fig)
    svg = svg_text(fig)
    return (f"<h2>{html.escape(name.replace('_', ' '))}</h2><div class='fig'>"
            f"<figure data-name='{html.escape(name)}' "
            f"data-legend-overlaps='{checks['legend_overlaps']}' "
            f"data-empty-panels='{checks['empty_panels']}'>{svg}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            f"<div class='numbers'>{html_table(header, rows)}</div></div>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1280px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
.fig{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
figure{margin:0;max-width:820px}svg.figure{width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#444;margin-top:0.4em;max-width:720px}
table{border-collapse:collapse;font-size:0.8em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f4f4f4}.numbers{max-height:360px;overflow:auto}"""

# A figure counts as drawn when its SVG has a visible box and some plotted path or marker;
# each figure also gets the number of plotted markers (<use> outside legends and axes) whose
# box meets a legend's box, as the browser lays them out (data-browser-overlaps).
SCRIPT = """window.addEventListener('load', function () {
  var figs = document.querySelectorAll('svg.figure'), ok = 0;
  function meets(a, b) {
    return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  }
  function outside(el) {
    for (var p = el.parentElement; p; p = p.parentElement) {
      var id = p.id || '';
      if (id.indexOf('legend') === 0 || id.indexOf('matplotlib.axis') === 0) { return false; }
    }
    return true;
  }
  figs.forEach(function (s) {
    var box = s.getBoundingClientRect();
    if (box.width > 0 && box.height > 0 && s.querySelector('path, use')) { ok += 1; }
    var legends = Array.prototype.map.call(s.querySelectorAll('g[id^="legend"]'),
      function (g) { return g.getBoundingClientRect(); });
    var hits = 0;
    s.querySelectorAll('use').forEach(function (u) {
      if (!outside(u)) { return; }
      var r = u.getBoundingClientRect();
      legends.forEach(function (l) { if (meets(r, l)) { hits += 1; } });
    });
    s.parentElement.setAttribute('data-browser-overlaps', String(hits));
  });
  document.body.setAttribute('data-figures-total', String(figs.length));
  document.body.setAttribute('data-figures-loaded', String(ok));
});"""


def html_page(title: str, parts: list[str]) -> str:
    """A self-contained page: `title`, then the HTML `parts`, then the load-check script."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + f"<script>{SCRIPT}</script></body></html>")
