"""Forgetting over the curriculum: the accuracy on every N solved after each curriculum step
(`probes.forgetting_matrix`), and the report's heat map of it.
"""

from __future__ import annotations

import numpy as np

from seqmem.analysis.context import Context
from seqmem.analysis.probes import forgetting_matrix
from seqmem.analysis.registry import Entry, analysis, figure, run_styles


@analysis("forgetting", needs="all_stages", writes=("forgetting",))
def forgetting(ctx: Context) -> dict:
    """R[i][j], the accuracy on N_j after solving N_i (None where the curriculum has no head
    for N_j yet), on half as many streams as the other accuracies (at least 2)."""
    ctx.say("forgetting matrix")
    f = forgetting_matrix(ctx.cfg, ctx.run, generator=ctx.generator,
                          n_trials=max(2, ctx.options["n_trials"] // 2),
                          stream_len=ctx.options["stream_len"], device=ctx.device)
    return {"forgetting": {"N": f["N"], "R": [[None if np.isnan(v) else float(v) for v in row]
                                              for row in f["R"]]}}


@figure("forgetting", analysis="forgetting")
def forgetting_figure(entries: list[Entry], canvas):
    """The accuracy matrix R as a heat map per run; the table: accuracy on the N just solved
    and the mean on the earlier ones."""
    fig, axes = canvas.subplots(1, len(entries), figsize=(4.2 * len(entries), 3.6),
                                squeeze=False)
    rows = []
    for ax, e, (label, _) in zip(axes[0], entries, run_styles(entries, canvas), strict=True):
        f = e.analysis["forgetting"]
        R = np.array([[np.nan if v is None else v for v in row] for row in f["R"]], dtype=float)
        im = ax.imshow(R, vmin=0.5, vmax=1.0, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(f["N"])), f["N"], fontsize=8)
        ax.set_yticks(range(len(f["N"])), f["N"], fontsize=8)
        ax.set(xlabel="tested on N", ylabel="after solving N")
        ax.set_title(f"{label}: streaming accuracy on each N\nafter each curriculum stage",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, label="accuracy")
        for i, n_i in enumerate(f["N"]):
            earlier = [R[i, j] for j in range(i) if np.isfinite(R[i, j])]
            rows.append([label, n_i, f"{R[i, i]:.3f}",
                         f"{np.mean(earlier):.3f}" if earlier else ""])
    return fig, ["run", "after N", "acc on N", "mean acc on earlier N"], rows
