"""The report page: a summary table, then every registered figure that the runs can draw.

The figures are those of `seqmem.analysis.registry.figure`: the analyses' (tau vs N,
ablation, perturbation, forgetting) and, below, the two drawn from training summaries
(epochs per N, the continual-learning accuracy matrix).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from seqmem.analysis.analyze import headline, read_analysis
from seqmem.analysis.registry import Entry, analyses, figure, figures
from seqmem.errors import SeqmemError
from seqmem.report.render import CANVAS, figure_section, html_page, html_table
from seqmem.store import RunStore

#: Rows of the summary table from the training summary: (label, summary key).
TRAINING_ROWS = (("max N solved", "n_solved"), ("epochs", "epochs"),
                 ("training time (s)", "elapsed_s"), ("tau mean (end)", "tau_mean"),
                 ("tau sd (end)", "tau_sd"))
CONTINUAL_ROWS = (("method", "method"), ("protocol", "protocol"),
                  ("average accuracy", "avg_acc"), ("backward transfer", "bwt"),
                  ("forward transfer", "fwt"), ("forgetting", "forgetting"),
                  ("learning curve area", "lca"))


@figure("epochs_per_N", summary="epochs_per_N")
def epochs_figure(entries: list[Entry], canvas):
    """Epochs spent on each N, per run."""
    fig, ax = canvas.subplots(figsize=(6, 3.2))
    rows = []
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        ep = {int(k): v for k, v in e.summary["epochs_per_N"].items()}
        ns = sorted(ep)
        ax.bar(np.array(ns) + (i - (len(entries) - 1) / 2) * width, [ep[n] for n in ns], width,
               color=canvas.color(e, i), label=f"{e.label} (max N {e.summary.get('n_solved')})")
        rows += [[e.label, n, ep[n]] for n in ns]
    ax.set(xlabel="N", ylabel="epochs spent", title="epochs per N")
    canvas.legend(ax)
    return fig, ["run", "N", "epochs"], rows


@figure("continual_accuracy_matrix", summary="R")
def continual_figure(entries: list[Entry], canvas):
    """Continual-learning runs: the accuracy matrix R[i, j] as a heat map per run."""
    fig, axes = canvas.subplots(1, len(entries), figsize=(3.8 * len(entries), 3.4),
                                squeeze=False)
    rows = []
    for ax, e in zip(axes[0], entries, strict=True):
        R = np.array(e.summary["R"], dtype=float)
        names = e.summary.get("experiences") or [str(j) for j in range(R.shape[1])]
        im = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if R[i, j] < 0.6 else "k")
        ax.set(xlabel="tested on", ylabel="after training on", title=f"{e.label}: R[i, j]")
        fig.colorbar(im, ax=ax, fraction=0.046)
        rows += [[e.label, names[i], *(f"{v:.3f}" for v in R[i])] for i in range(R.shape[0])]
    width = max(len(e.summary["R"]) for e in entries)
    return fig, ["run", "after", *(f"on {j}" for j in range(width))], rows


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def summary_table(entries: list[Entry]) -> tuple[list[str], list[list]]:
    """(header, rows): a column per run; rows of its training summary, then the headline
    numbers of every registered analysis that some run has (from its analysis, else its
    summary), then, for continual-learning runs, their metrics."""
    header = ["measure", *(e.label for e in entries)]
    rows = [["run id", *(e.run_id for e in entries)]]
    rows += [[label, *(_fmt(e.summary.get(key)) for e in entries)]
             for label, key in TRAINING_ROWS]
    heads = [headline(e.analysis) for e in entries]
    for spec in analyses():
        for key, label in spec.headline.items():
            vals = [h.get(key, e.summary.get(key)) for h, e in zip(heads, entries, strict=True)]
            if any(v is not None for v in vals):
                rows.append([label, *map(_fmt, vals)])
    if any("avg_acc" in e.summary for e in entries):
        rows += [[label, *(_fmt(e.summary.get(key)) for e in entries)]
                 for label, key in CONTINUAL_ROWS]
        rows = [r for r in rows if any(c != "" for c in r[1:])]
    return header, rows


def write_report(entries: list[Entry], out_dir: str | Path, *, title: str = "seqmem report"
                 ) -> Path:
    """Write report.html (self-contained) and one PNG per figure; return the page's path.

    `out_dir` is a folder (the page is <out_dir>/report.html) or a path ending in .html (the
    PNGs go beside it). A figure is drawn from the entries that have its keys, and left out
    when none has.
    """
    out = Path(out_dir)
    page_path = out / "report.html"
    if out.suffix.lower() in (".html", ".htm"):
        out, page_path = out.parent, out
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>", html_table(*summary_table(entries))]
    for fig_spec in figures():
        have = fig_spec.entries(entries)
        res = fig_spec.draw(have, CANVAS) if have else None
        if res is not None:
            parts.append(figure_section(fig_spec.name, *res, out))
    data = json.dumps([{"label": e.label, "run_id": e.run_id} for e in entries])
    parts.append(f"<script type='application/json' id='runs'>{html.escape(data)}</script>")
    page_path.write_text(html_page(title, parts))
    return page_path


def load_entries(store: RunStore, run_ids: Iterable[str]) -> list[Entry]:
    """The report's entries of stored runs (ids or unique prefixes): each run's summary (the
    store's, with its summary.json over it: the full summary of a continual run, with R) and
    its analysis.json ({} if it has none); labelled by curriculum, else name, else id."""
    entries = []
    for rid in run_ids:
        row = store.get(rid)
        run = store.open_run(row["id"])
        if not run.dir.is_dir():
            raise SeqmemError(f"run {run.id}: its folder {str(run.dir)!r} is gone, though the "
                              f"store still lists it (see seqmem store check)")
        summary = {**row["summary"], **run.read_summary()}  # invalid: a one-line StoreError
        label = summary.get("curriculum") or row.get("name") or run.id
        entries.append(Entry(label, run.id, summary, read_analysis(run)))
    return entries
