"""Ablation at the last stage (Khajehabdollahi et al., ICLR 2024): the relative accuracy on the
streaming task (the head of the last N) with the longest-tau unit silenced, and with the
shortest-tau unit silenced (`probes.features_silenced`: held at zero at every step); and the
report's figure of both.
"""

from __future__ import annotations

import numpy as np
import torch

from seqmem.analysis.context import Context
from seqmem.analysis.registry import Entry, analysis, figure


def _headline(w: dict) -> dict:
    a = w.get("ablation")
    return {"ablate_longest_rel": a["longest_rel"],
            "ablate_shortest_rel": a["shortest_rel"]} if a else {}


@analysis("ablation", needs="last_stage", writes=("base_accuracy", "ablation"),
          headline={"ablate_longest_rel": "ablate longest-tau unit (rel. acc)",
                    "ablate_shortest_rel": "ablate shortest-tau unit (rel. acc)"},
          headline_of=_headline)
def ablation(ctx: Context) -> dict:
    """Accuracy with one unit silenced over the accuracy of the unchanged model, for the
    units of longest and of shortest tau; ablation is None for a mixer without timescales."""
    base = ctx.base_accuracy()
    model = ctx.model()
    ts = model.timescales()
    if ts is None:
        return {"base_accuracy": base, "ablation": None}
    longest, shortest = int(torch.argmax(ts)), int(torch.argmin(ts))
    ctx.say("ablation")
    return {"base_accuracy": base, "ablation": {
        "N": ctx.N,
        "longest_tau_unit": longest, "longest_tau": float(ts[longest]),
        "longest_rel": ctx.stream_accuracy(model, silence=[longest]) / base,
        "shortest_tau_unit": shortest, "shortest_tau": float(ts[shortest]),
        "shortest_rel": ctx.stream_accuracy(model, silence=[shortest]) / base,
    }}


@figure("ablation", analysis="ablation")
def ablation_figure(entries: list[Entry], canvas):
    """Relative accuracy with the longest- and the shortest-tau unit silenced, per run."""
    fig, ax = canvas.subplots(figsize=(5, 3.2))
    rows = []
    x = np.arange(2)
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        a = e.analysis["ablation"]
        vals = [a["longest_rel"], a["shortest_rel"]]
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, vals, width, color=canvas.color(e, i),
               label=f"{e.label} (N = {a['N']})")
        rows.append([e.label, a["N"], f"{a['longest_tau']:.3f}", f"{vals[0]:.3f}",
                     f"{a['shortest_tau']:.3f}", f"{vals[1]:.3f}"])
    ax.set_xticks(x, ["longest-tau unit", "shortest-tau unit"])
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set(ylabel="relative accuracy", title="ablating one unit")
    canvas.legend(ax)
    return fig, ["run", "N", "longest tau", "rel. acc", "shortest tau", "rel. acc"], rows
