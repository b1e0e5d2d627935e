"""The report page: a summary table, then every registered figure that the runs can draw.

The figures are those of `seqmem.analysis.registry.figure`: the analyses' (tau vs N,
ablation, perturbation, forgetting) and, below, those drawn from training summaries and
stage rows (epochs per N, the largest N reached over time and epochs, dimensionality per N,
the continual-learning accuracy matrix). Every figure has a caption under it: the one its
function returns as a 4th element (fig, header, rows, caption), else its function's
`caption` attribute, else one made of its panel titles and the runs it shows
(`figure_caption`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.patches import Patch

from seqmem.analysis.analyze import headline, read_analysis
from seqmem.analysis.registry import Entry, analyses, figure, figures
from seqmem.errors import SeqmemError
from seqmem.report.render import CANVAS, figure_section, html_page, html_table
from seqmem.store import RunStore

#: Rows of the summary table from the training summary: (label, summary key).
TRAINING_ROWS = (("max N solved", "n_solved"), ("epochs", "epochs"),
                 ("training time (s)", "elapsed_s"), ("tau at the end", "tau_mean"),
                 ("sd over units", "tau_sd"))
CONTINUAL_ROWS = (("method", "method"), ("protocol", "protocol"),
                  ("average accuracy", "avg_acc"), ("backward transfer", "bwt"),
                  ("forward transfer", "fwt"), ("forgetting", "forgetting"),
                  ("learning curve area", "lca"))


def _solved(e: Entry) -> list[int]:
    """The N a run solved: its stages', else every N up to n_solved."""
    stages = e.summary.get("stages") or []
    if stages:
        return [int(s["N"]) for s in stages]
    n = e.summary.get("n_solved")
    return [int(k) for k in e.summary.get("epochs_per_N", {}) if n is not None and int(k) <= n]


def _layered(i: int, color: str) -> dict:
    """Line and marker style of the i-th run drawn: equal curves would hide each other, so
    later runs are thinner, dashed and hollow, on top of the earlier ones."""
    return {"color": color, "linewidth": max(3.2 - 1.1 * i, 1.0),
            "linestyle": ("-", "--", ":", "-.")[i % 4], "markersize": 8 - 1.5 * min(i, 3),
            "markerfacecolor": "none" if i else color, "markeredgewidth": 1.5}


def _runs_phrase(entries: list[Entry]) -> str:
    labels = ", ".join(dict.fromkeys(e.label for e in entries))
    return f"{len(entries)} run{'s' if len(entries) != 1 else ''} ({labels})"


@figure("epochs_per_N", summary="epochs_per_N")
def epochs_figure(entries: list[Entry], canvas):
    """Epochs spent on each N, per run; a stage the run stopped in before solving it is drawn
    hollow and hatched."""
    fig, ax = canvas.subplots(figsize=(6.4, 3.2))
    rows = []
    width = 0.8 / len(entries)
    any_open = False
    for i, e in enumerate(entries):
        ep = {int(k): v for k, v in e.summary["epochs_per_N"].items()}
        solved = set(_solved(e))
        ns = sorted(ep)
        c = canvas.color(e, i)
        x = np.array(ns) + (i - (len(entries) - 1) / 2) * width
        done = [j for j, n in enumerate(ns) if n in solved]
        ax.bar(x[done], [ep[ns[j]] for j in done], width, color=c,
               label=f"{e.label} (max N {e.summary.get('n_solved')})")
        open_ = [j for j, n in enumerate(ns) if n not in solved]
        if open_:
            any_open = True
            ax.bar(x[open_], [ep[ns[j]] for j in open_], width, facecolor="none",
                   edgecolor=c, hatch="///", linewidth=1.0)
        rows += [[e.label, n, ep[n], "yes" if n in solved else "no"] for n in ns]
    ax.set(xlabel="N", ylabel="epochs spent", title="epochs per N")
    canvas.integer_axis(ax, "x")
    canvas.integer_axis(ax, "y")
    handles = ax.get_legend_handles_labels()[0]
    if any_open:
        handles.append(Patch(facecolor="none", edgecolor="#555", hatch="///",
                             label="not solved (run stopped)"))
    canvas.legend(ax, handles=handles)
    caption = (f"Epochs of training spent at each curriculum step N, for {_runs_phrase(entries)}"
               f"; one bar per run and N, no averaging. Filled bars: N solved; hollow hatched "
               f"bars: the step a run was still on when it stopped.")
    return fig, ["run", "N", "epochs", "solved"], rows, caption


def _reach(e: Entry) -> list[tuple[float, int, int]]:
    """(elapsed s, epoch, N solved) at the start and at each solved stage of a run, and at
    its end."""
    stages = sorted(e.summary.get("stages") or [], key=lambda s: s["epoch"])
    if not stages:
        return []
    pts = [(0.0, 0, int(stages[0]["N"]) - 1)]
    pts += [(float(s["elapsed_s"]), int(s["epoch"]), int(s["N"])) for s in stages]
    end_t, end_ep = e.summary.get("elapsed_s"), e.summary.get("epochs")
    if isinstance(end_t, int | float) and isinstance(end_ep, int) and end_ep >= pts[-1][1]:
        pts.append((float(end_t), end_ep, pts[-1][2]))
    return pts


@figure("N_reached", summary="stages")
def reach_figure(entries: list[Entry], canvas):
    """The largest N solved against wall time and against epochs, one line per curriculum
    (the flagship paper's main result)."""
    have = [e for e in entries if _reach(e)]
    if not have:
        return None
    fig, axes = canvas.subplots(1, 2, figsize=(9, 3.4))
    rows = []
    for i, e in enumerate(have):
        pts = _reach(e)
        c = canvas.color(e, i)
        t, ep, n = (np.array(v) for v in zip(*pts, strict=True))
        k = len(e.summary["stages"])
        style = _layered(i, c)
        for ax, x in ((axes[0], t), (axes[1], ep)):
            ax.step(x, n, where="post", label=e.label, **style)
            ax.plot(x[1:k + 1], n[1:k + 1], marker="o", **{**style, "linestyle": "none"})
        rows += [[e.label, s["N"], s["epoch"], s["elapsed_s"]] for s in e.summary["stages"]]
    axes[0].set(xlabel="wall time (s)", ylabel="largest N solved", title="N reached vs time")
    axes[1].set(xlabel="epoch", ylabel="largest N solved", title="N reached vs epochs")
    canvas.integer_axis(axes[0], "y")
    canvas.integer_axis(axes[1], "x")
    canvas.integer_axis(axes[1], "y")
    canvas.legend(axes[1])
    caption = (f"The largest memory length N solved as training goes on, against wall-clock "
               f"seconds (left) and epochs (right), one line per curriculum, for "
               f"{_runs_phrase(have)}; each marker is a solved stage, each line one run (no "
               f"averaging over seeds). A line ends when its run stopped.")
    return fig, ["run", "N solved", "epoch", "elapsed (s)"], rows, caption


def _dim_rows(e: Entry) -> list[tuple[int, int]]:
    return [(int(s["N"]), int(s["dimensionality"])) for s in e.analysis.get("stages") or []
            if s.get("dimensionality") is not None]


@figure("dimensionality", analysis="stages")
def dimensionality_figure(entries: list[Entry], canvas):
    """The dimensionality of the activity (principal components for 90 % of its variance)
    against the N solved, per run."""
    have = [e for e in entries if _dim_rows(e)]
    if not have:
        return None
    fig, ax = canvas.subplots(figsize=(6.4, 3.2))
    rows = []
    for i, e in enumerate(have):
        r = _dim_rows(e)
        ax.plot(*zip(*r, strict=True), marker="o", label=e.label,
                **_layered(i, canvas.color(e, i)))
        rows += [[e.label, n, d] for n, d in r]
    ax.set(xlabel="N solved", ylabel="PCs for 90 % of variance", title="dimensionality vs N")
    canvas.integer_axis(ax, "x")
    canvas.integer_axis(ax, "y")
    canvas.legend(ax)
    caption = (f"Dimensionality of the last block's activity: the number of principal "
               f"components explaining 90 % of its variance, driven by random bits "
               f"(4 trials of 1000 steps after 200 discarded, pooled), at the stages analysed, "
               f"for {_runs_phrase(have)}; one line per run.")
    return fig, ["run", "N", "dimensionality"], rows, caption


def chance_of(summary: dict) -> float:
    """The chance accuracy of a continual run's experiences: the summary's "chance", else
    1 / its "n_classes", else 0.5 (two classes)."""
    if isinstance(summary.get("chance"), int | float):
        return float(summary["chance"])
    if isinstance(summary.get("n_classes"), int) and summary["n_classes"] > 1:
        return 1.0 / summary["n_classes"]
    return 0.5


#: Largest number of experiences whose cells are numbered; the map grows with their number.
MAX_NUMBERED = 12
CELL_IN = 0.42  # inches per cell: a 7 pt number fits with room to spare


@figure("continual_accuracy_matrix", summary="R")
def continual_figure(entries: list[Entry], canvas):
    """Continual-learning runs: the accuracy matrix R[i, j] (after training on experience i,
    tested on j) as a heat map per run, centred on chance accuracy."""
    n_max = max(len(e.summary["R"][0]) for e in entries)
    side = max(3.0, CELL_IN * n_max + 1.6)
    ncols = min(len(entries), 2 if side > 4.5 or len(entries) == 4 else 3)
    nrows = -(-len(entries) // ncols)
    fig, axes = canvas.subplots(nrows, ncols, figsize=(side * ncols + 0.8, side * nrows),
                                squeeze=False)
    rows = []
    chances = set()
    im = None
    for ax, e in zip(axes.flat, entries, strict=False):
        R = np.array(e.summary["R"], dtype=float)
        n = R.shape[1]
        names = list(e.summary.get("experiences") or [str(j) for j in range(n)])
        chance = chance_of(e.summary)
        chances.add(chance)
        norm = TwoSlopeNorm(vcenter=chance, vmin=min(0.0, chance - 1e-6), vmax=1.0)
        cmap = "RdBu"
        if e.summary.get("score") == "mse":  # a regression run's MSEs: low (good) is blue
            top = max(float(np.nanmax(R)) if np.isfinite(R).any() else 1.0, 1e-12)
            norm, cmap = TwoSlopeNorm(vcenter=top / 2, vmin=0.0, vmax=top), "RdBu_r"
        sched = e.summary.get("schedule")  # sessions that revisit experiences
        row_names = [names[j] for j in sched] if sched else names[:R.shape[0]]
        im = ax.imshow(R, norm=norm, cmap=cmap, origin="upper", aspect="equal")
        ax.set_xticks(range(n), names, fontsize=7, rotation=45 if n > 6 else 0)
        ax.set_yticks(range(R.shape[0]), row_names, fontsize=7)
        if n <= MAX_NUMBERED:
            for i in range(R.shape[0]):
                for j in range(n):
                    if np.isfinite(R[i, j]):
                        dark = abs(norm(R[i, j]) - 0.5) > 0.32
                        ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="w" if dark else "k")
        ax.set(xlabel="tested on", ylabel="after training on", title=e.label)
        rows += [[e.label, row_names[i], *(f"{v:.3f}" for v in R[i])]
                 for i in range(R.shape[0])]
    for ax in axes.flat[len(entries):]:
        ax.set_visible(False)
    cb = fig.colorbar(im, ax=axes, fraction=0.04, shrink=0.8)
    cb.set_label("accuracy (white = chance)")
    names = list(entries[0].summary.get("experiences") or [str(j) for j in range(n_max)])
    names += [str(j) for j in range(len(names), n_max)]
    chance_txt = ", ".join(f"{c:g}" for c in sorted(chances))
    caption = (f"Accuracy matrix R[i, j] of {_runs_phrase(entries)}: the accuracy on "
               f"experience j (column) after training on experience i (row), one map per run "
               f"(no averaging over seeds). The colour scale is centred on chance accuracy "
               f"({chance_txt}): blue above, red below; above the diagonal is forward "
               f"transfer, below it is what was kept.")
    return fig, ["run", "after", *(f"on {nm}" for nm in names)], rows, caption


def figure_caption(spec, result: tuple, entries: list[Entry]) -> str:
    """A figure's caption: the one its function returned (a 4th element), else its
    function's `caption` attribute (a string, or a function of the entries), else one made
    of the figure's panel titles and the runs it shows."""
    if len(result) > 3 and result[3]:
        return str(result[3])
    declared = getattr(spec.draw, "caption", None)
    if callable(declared):
        return str(declared(entries))
    if declared:
        return str(declared)
    titles = [ax.get_title() for ax in result[0].axes if ax.get_title()]
    what = "; ".join(titles) if titles else spec.name.replace("_", " ")
    return f"{what[:1].upper()}{what[1:]}, for {_runs_phrase(entries)}."


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def mean_sd(mean, sd) -> str:
    """The text "mean ± sd" (floats to 3 decimals); the mean alone without an sd, and ""
    without a mean."""
    return _fmt(mean) if sd is None or mean is None else f"{_fmt(mean)} ± {_fmt(sd)}"


def paired_rows(labels: list[tuple[str, str]]) -> list[tuple[str, str, str | None]]:
    """(label, key, sd key or None) for (label, key) rows in order: a key `K_sd` whose `K`
    (or `K_mean`) is also a row joins that row, which reads "label: mean ± <sd label>", e.g.
    "tau at the end: mean ± sd over units"."""
    keys = {key for _, key in labels}
    sd_of = {}
    for _, key in labels:
        if key.endswith("_sd"):
            base = next((b for b in (key[:-3], key[:-3] + "_mean") if b in keys), None)
            if base is not None:
                sd_of[base] = key
    sd_label = dict((key, label) for label, key in labels)
    return [(f"{label}: mean ± {sd_label[sd_of[key]]}" if key in sd_of else label, key,
             sd_of.get(key)) for label, key in labels if key not in sd_of.values()]


def summary_table(entries: list[Entry]) -> tuple[list[str], list[list]]:
    """(header, rows): a column per run; rows of its training summary, then the headline
    numbers of every registered analysis that some run has (from its analysis, else its
    summary), then, for continual-learning runs, their metrics. A mean and its sd share one
    row, "mean ± sd" (`paired_rows`)."""
    header = ["measure", *(e.label for e in entries)]
    rows = [["run id", *(e.run_id for e in entries)]]
    rows += [[label, *(mean_sd(e.summary.get(key), e.summary.get(sd) if sd else None)
                       for e in entries)]
             for label, key, sd in paired_rows([(lb, k) for lb, k in TRAINING_ROWS])]
    heads = [headline(e.analysis) for e in entries]
    for spec in analyses():
        for label, key, sd in paired_rows([(lb, k) for k, lb in spec.headline.items()]):
            vals = [h.get(key, e.summary.get(key)) for h, e in zip(heads, entries, strict=True)]
            sds = [None if sd is None else h.get(sd, e.summary.get(sd))
                   for h, e in zip(heads, entries, strict=True)]
            if any(v is not None for v in vals):
                rows.append([label, *map(mean_sd, vals, sds)])
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
            parts.append(figure_section(fig_spec.name, *res[:3], out,
                                        caption=figure_caption(fig_spec, res, have)))
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
        entries.append(Entry(label, run.id, summary, read_analysis(run), str(run.dir)))
    return entries
