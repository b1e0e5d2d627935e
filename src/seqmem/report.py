"""A run's findings on one page: a self-contained HTML report, plus PNGs for papers.

`write_report(entries, out_dir)` takes one entry per run (label, summary, analysis) and writes
<out_dir>/report.html (figures embedded as base64 PNG, no external resources) and
<out_dir>/<figure>.png. Every figure has its numbers in a table beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLORS = {"single": "#d62728", "multi": "#1f77b4", "sliding": "#2ca02c", "none": "#7f7f7f"}


@dataclass
class Entry:
    """One run in the report."""

    label: str  # e.g. the curriculum
    run_id: str
    summary: dict
    analysis: dict = field(default_factory=dict)


def _color(e: Entry, i: int) -> str:
    return COLORS.get(e.summary.get("curriculum", ""), f"C{i}")


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes,
                color="#888")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _tau_rows(e: Entry) -> list[tuple[int, float, float, float | None]]:
    """(N, tau mean, tau sd, tau_net) per solved N: from the analysis, else the summary."""
    stages = e.analysis.get("stages")
    if stages:
        return [(s["N"], s["tau"]["mean"], s["tau"]["sd"], s.get("tau_net_mean"))
                for s in stages if "tau" in s]
    return [(s["N"], s["tau_mean"], s["tau_sd"], None) for s in e.summary.get("stages", [])
            if "tau_mean" in s]


def fig_tau(entries: list[Entry]):
    if not any(_tau_rows(e) for e in entries):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    rows = []
    for i, e in enumerate(entries):
        r = _tau_rows(e)
        if not r:
            continue
        n = np.array([x[0] for x in r])
        m = np.array([x[1] for x in r])
        sd = np.array([x[2] for x in r])
        c = _color(e, i)
        axes[0].plot(n, m, "o-", color=c, label=e.label)
        axes[0].fill_between(n, m - sd, m + sd, color=c, alpha=0.15)
        tn = [(x[0], x[3]) for x in r if x[3] is not None and np.isfinite(x[3])]
        if tn:
            axes[1].plot(*zip(*tn, strict=True), "o-", color=c, label=e.label)
        rows += [[e.label, x[0], f"{x[1]:.3f}", f"{x[2]:.3f}",
                  "" if x[3] is None else f"{x[3]:.2f}"] for x in r]
    axes[0].set(xlabel="N solved", ylabel="single-unit tau (mean ± sd)", title="tau vs N")
    axes[1].set(xlabel="N solved", ylabel="mean tau_net (units with tau_net > 1)",
                title="network-mediated timescale vs N")
    for ax in axes:
        _legend(ax)
    return fig, ["run", "N", "tau mean", "tau sd", "tau_net"], rows


def fig_epochs(entries: list[Entry]):
    if not any(e.summary.get("epochs_per_N") for e in entries):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), layout="constrained")
    rows = []
    width = 0.8 / max(1, len(entries))
    for i, e in enumerate(entries):
        ep = {int(k): v for k, v in e.summary.get("epochs_per_N", {}).items()}
        if not ep:
            continue
        ns = sorted(ep)
        ax.bar(np.array(ns) + (i - (len(entries) - 1) / 2) * width, [ep[n] for n in ns], width,
               color=_color(e, i), label=f"{e.label} (max N {e.summary.get('n_solved')})")
        rows += [[e.label, n, ep[n]] for n in ns]
    ax.set(xlabel="N", ylabel="epochs spent", title="epochs per N")
    _legend(ax)
    return fig, ["run", "N", "epochs"], rows


def fig_forgetting(entries: list[Entry]):
    have = [e for e in entries if e.analysis.get("forgetting")]
    if not have:
        return None
    fig, axes = plt.subplots(1, len(have), figsize=(4.2 * len(have), 3.6), squeeze=False,
                             layout="constrained")
    rows = []
    for ax, e in zip(axes[0], have, strict=True):
        f = e.analysis["forgetting"]
        R = np.array([[np.nan if v is None else v for v in row] for row in f["R"]], dtype=float)
        im = ax.imshow(R, vmin=0.5, vmax=1.0, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(f["N"])), f["N"], fontsize=7)
        ax.set_yticks(range(len(f["N"])), f["N"], fontsize=7)
        ax.set(xlabel="tested on N", ylabel="after solving N", title=f"{e.label}: accuracy")
        fig.colorbar(im, ax=ax, fraction=0.046)
        for i, n_i in enumerate(f["N"]):
            earlier = [R[i, j] for j in range(i) if np.isfinite(R[i, j])]
            rows.append([e.label, n_i, f"{R[i, i]:.3f}",
                         f"{np.mean(earlier):.3f}" if earlier else ""])
    return fig, ["run", "after N", "acc on N", "mean acc on earlier N"], rows


def fig_ablation(entries: list[Entry]):
    have = [e for e in entries if e.analysis.get("ablation")]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    rows = []
    x = np.arange(2)
    width = 0.8 / len(have)
    for i, e in enumerate(have):
        a = e.analysis["ablation"]
        vals = [a["longest_rel"], a["shortest_rel"]]
        ax.bar(x + (i - (len(have) - 1) / 2) * width, vals, width, color=_color(e, i),
               label=f"{e.label} (N = {a['N']})")
        rows.append([e.label, a["N"], f"{a['longest_tau']:.3f}", f"{vals[0]:.3f}",
                     f"{a['shortest_tau']:.3f}", f"{vals[1]:.3f}"])
    ax.set_xticks(x, ["longest-tau unit", "shortest-tau unit"])
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set(ylabel="relative accuracy", title="ablating one unit")
    _legend(ax)
    return fig, ["run", "N", "longest tau", "rel. acc", "shortest tau", "rel. acc"], rows


def fig_perturbation(entries: list[Entry]):
    have = [e for e in entries if e.analysis.get("perturbation")]
    if not have:
        return None
    kinds = sorted({k for e in have for k in e.analysis["perturbation"]})
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.2), squeeze=False,
                             layout="constrained")
    rows = []
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, e in enumerate(have):
            curve = e.analysis["perturbation"].get(kind)
            if not curve:
                continue
            eps = [p["eps"] for p in curve]
            ax.errorbar(eps, [p["rel_mean"] for p in curve], [p["rel_sd"] for p in curve],
                        fmt="o-", color=_color(e, i), label=e.label, capsize=2)
            rows += [[e.label, kind, p["eps"], f"{p['rel_mean']:.3f}", f"{p['rel_sd']:.3f}"]
                     for p in curve]
        ax.set(xlabel="eps (relative size)", ylabel="relative accuracy",
               title=f"perturbing {kind}", ylim=(0, 1.1))
        _legend(ax)
    return fig, ["run", "perturbed", "eps", "rel. acc (mean)", "sd"], rows


def fig_continual(entries: list[Entry]):
    """Continual-learning runs: the accuracy matrix R[i, j] as a heat map per run."""
    have = [e for e in entries if e.summary.get("R")]
    if not have:
        return None
    fig, axes = plt.subplots(1, len(have), figsize=(3.8 * len(have), 3.4), squeeze=False,
                             layout="constrained")
    rows = []
    for ax, e in zip(axes[0], have, strict=True):
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
    width = max(len(e.summary["R"]) for e in have)
    return fig, ["run", "after", *(f"on {j}" for j in range(width))], rows


FIGURES = [("tau_vs_N", fig_tau), ("epochs_per_N", fig_epochs), ("forgetting", fig_forgetting),
           ("ablation", fig_ablation), ("perturbation", fig_perturbation),
           ("continual_accuracy_matrix", fig_continual)]


def summary_table(entries: list[Entry]) -> tuple[list[str], list[list]]:
    header = ["measure", *(e.label for e in entries)]

    def get(e, *path):
        v = e.analysis if path[0] in ("ablation", "perturbation") else e.summary
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return v

    def fmt(v):
        return "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [
        ["run id", *(e.run_id for e in entries)],
        ["max N solved", *(fmt(e.summary.get("n_solved")) for e in entries)],
        ["epochs", *(fmt(e.summary.get("epochs")) for e in entries)],
        ["training time (s)", *(fmt(e.summary.get("elapsed_s")) for e in entries)],
        ["tau mean (end)", *(fmt(e.summary.get("tau_mean")) for e in entries)],
        ["tau sd (end)", *(fmt(e.summary.get("tau_sd")) for e in entries)],
        ["tau_net mean (last N)", *(fmt(e.summary.get("tau_net_mean")) for e in entries)],
        ["ablate longest-tau unit (rel. acc)", *(fmt(get(e, "ablation", "longest_rel"))
                                                 for e in entries)],
        ["ablate shortest-tau unit (rel. acc)", *(fmt(get(e, "ablation", "shortest_rel"))
                                                  for e in entries)],
        ["perturb tau, eps 0.1 (rel. acc)", *(fmt(e.summary.get("perturb_tau_0.1_rel"))
                                              for e in entries)],
        ["perturb W, eps 0.1 (rel. acc)", *(fmt(e.summary.get("perturb_W_0.1_rel"))
                                            for e in entries)],
    ]
    if any("avg_acc" in e.summary for e in entries):  # continual-learning runs
        rows += [[label, *(fmt(e.summary.get(key)) for e in entries)] for label, key in (
            ("method", "method"), ("protocol", "protocol"), ("average accuracy", "avg_acc"),
            ("backward transfer", "bwt"), ("forward transfer", "fwt"),
            ("forgetting", "forgetting"), ("learning curve area", "lca"))]
        rows = [r for r in rows if any(c != "" for c in r[1:])]
    return header, rows


def _table(header, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


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


def write_report(entries: list[Entry], out_dir: str | Path, *, title: str = "seqmem report"
                 ) -> Path:
    """Write report.html (self-contained) and one PNG per figure; return the page's path.

    `out_dir` is a folder (the page is <out_dir>/report.html) or a path ending in .html (the
    PNGs go beside it).
    """
    out = Path(out_dir)
    page_path = out / "report.html"
    if out.suffix.lower() in (".html", ".htm"):
        out, page_path = out.parent, out
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>", _table(*summary_table(entries))]
    for name, make in FIGURES:
        res = make(entries)
        if res is None:
            continue
        fig, header, rows = res
        png = _png(fig)
        (out / f"{name}.png").write_bytes(png)
        b64 = base64.b64encode(png).decode()
        parts.append(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2><div class='fig'>"
            f"<img class='figure' alt='{name}' src='data:image/png;base64,{b64}'>"
            f"<div class='numbers'>{_table(header, rows)}</div></div>"
        )
    data = json.dumps([{"label": e.label, "run_id": e.run_id} for e in entries])
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "".join(parts)
            + f"<script type='application/json' id='runs'>{html.escape(data)}</script>"
            f"<script>{SCRIPT}</script></body></html>")
    page_path.write_text(page)
    return page_path
