"""A run's findings on one page: a self-contained HTML report, plus PNGs for papers.

`write_report(entries, out_dir)` takes one `Entry` per run (label, summary, analysis; stored
runs give theirs through `load_entries(store, run_ids)`) and writes <out_dir>/report.html
(figures inline as vector SVG, no external resources) and <out_dir>/<figure>.png at 200 dpi.
Every figure has a caption under it and its numbers in a table beside it. Figures are
registered with `seqmem.analysis.registry.figure` (also exported here), next to the
analysis they draw; `render` holds the plumbing the report and the sweep dashboard share.
"""

from seqmem.analysis.registry import Entry, figure
from seqmem.report.page import (
    continual_figure,
    dimensionality_figure,
    epochs_figure,
    figure_caption,
    load_entries,
    reach_figure,
    summary_table,
    write_report,
)

__all__ = ["Entry", "continual_figure", "dimensionality_figure", "epochs_figure", "figure",
           "figure_caption", "load_entries", "reach_figure", "summary_table", "write_report"]
