"""A run's findings on one page: a self-contained HTML report, plus PNGs for papers.

`write_report(entries, out_dir)` takes one `Entry` per run (label, summary, analysis; stored
runs give theirs through `load_entries(store, run_ids)`) and writes <out_dir>/report.html
(figures embedded as base64 PNG, no external resources) and <out_dir>/<figure>.png. Every
figure has its numbers in a table beside it. Figures are registered with
`seqmem.analysis.registry.figure` (also exported here), next to the analysis they draw;
`render` holds the plumbing the report and the sweep dashboard share.
"""

from seqmem.analysis.registry import Entry, figure
from seqmem.report.page import (
    continual_figure,
    epochs_figure,
    load_entries,
    summary_table,
    write_report,
)

__all__ = ["Entry", "continual_figure", "epochs_figure", "figure", "load_entries",
           "summary_table", "write_report"]
