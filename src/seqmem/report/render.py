"""The drawing and page plumbing of the report and the sweep dashboard.

- `Canvas` (`CANVAS`): what a figure draws with: matplotlib figures in one layout, a colour
  per run (by curriculum), a legend or a "not measured" note;
- `png_bytes`, `html_table`, `figure_section`: a figure as PNG bytes, a table of its numbers,
  and both as one section of a page (the PNG written beside the page as well);
- `html_page`: a self-contained page (figures embedded as base64, no external resources)
  whose script records on <body> how many figures there are and how many loaded.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"single": "#d62728", "multi": "#1f77b4", "sliding": "#2ca02c", "none": "#7f7f7f"}


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

    def legend(self, ax) -> None:
        """A legend of the labelled artists, or "not measured" on an empty panel."""
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                    transform=ax.transAxes, color="#888")


CANVAS = Canvas()


def png_bytes(fig) -> bytes:
    """The figure as PNG (110 dpi, tight bounding box); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def html_table(header, rows) -> str:
    """An HTML table of `header` and `rows`, every cell escaped."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def figure_section(name: str, fig, header, rows, out_dir: Path) -> str:
    """Write <out_dir>/<name>.png and return its section: a heading, the figure embedded,
    and its numbers in a table beside it."""
    png = png_bytes(fig)
    (Path(out_dir) / f"{name}.png").write_bytes(png)
    b64 = base64.b64encode(png).decode()
    return (f"<h2>{html.escape(name.replace('_', ' '))}</h2><div class='fig'>"
            f"<img class='figure' alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
            f"<div class='numbers'>{html_table(header, rows)}</div></div>")


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}
.fig{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
.fig img{max-width:640px;border:1px solid #eee}
table{border-collapse:collapse;font-size:0.8em}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f4f4f4}.numbers{max-height:360px;overflow:auto}"""

SCRIPT = """window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.figure'), ok = 0;
  imgs.forEach(function (im) { if (im.complete && im.naturalWidth > 0) { ok += 1; } });
  document.body.setAttribute('data-figures-total', String(imgs.length));
  document.body.setAttribute('data-figures-loaded', String(ok));
});"""


def html_page(title: str, parts: list[str]) -> str:
    """A self-contained page: `title`, then the HTML `parts`, then the load-check script."""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + f"<script>{SCRIPT}</script></body></html>")
