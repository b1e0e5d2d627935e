"""Perturbation at the last stage (Li et al. 2020; Khajehabdollahi et al., ICLR 2024): the
relative accuracy on the streaming task after the recurrent weights W or the timescales tau of
the last block are perturbed with relative size eps (`probes.perturbed`), several draws per
eps; and the report's figure of the curves.

W is the leaky RNN's W, or a GRU's / LSTM's / Elman RNN's weight_hh (every gate at once); tau
is perturbed only where the mixer has a parameter tau (the leaky RNN): a gated RNN's timescales
follow from its gates and have no parameter of their own. A kind that cannot be perturbed is
written as {"skipped": reason}, so that the report can say why it has no curve.
"""

from __future__ import annotations

import numpy as np

from seqmem.analysis.context import Context
from seqmem.analysis.probes import perturbable, perturbed
from seqmem.analysis.registry import Entry, analysis, figure, run_styles

EPS = (0.0, 0.05, 0.1, 0.2, 0.5)
KINDS = ("W", "tau")  # the parameters perturbed, where the mixer has them
HEADLINE_EPS = 0.1


def _headline(w: dict) -> dict:
    return {f"perturb_{kind}_{HEADLINE_EPS}_rel": pt["rel_mean"]
            for kind, curve in (w.get("perturbation") or {}).items() if isinstance(curve, list)
            for pt in curve if pt["eps"] == HEADLINE_EPS}


@analysis("perturbation", needs="last_stage", writes=("base_accuracy", "perturbation"),
          headline={f"perturb_{kind}_{HEADLINE_EPS}_rel":
                    f"perturb {kind}, eps {HEADLINE_EPS} (rel. acc)" for kind in ("tau", "W")},
          headline_of=_headline, options={"eps": EPS, "n_draws": 2})
def perturbation(ctx: Context) -> dict:
    """Per perturbed parameter, per eps: the mean and sd over `n_draws` draws (one at eps = 0,
    an exact copy) of the accuracy over the accuracy of the unchanged model; {"skipped":
    reason} for a kind the mixer has no parameter for."""
    base = ctx.base_accuracy()
    model = ctx.model()
    mixer = model.blocks[-1].mixer
    res = {}
    for kind in KINDS:
        if perturbable(mixer, kind) is None:
            res[kind] = {"skipped": f"mixer {mixer.name!r} has no parameter "
                         + ("tau (its timescales follow from its gates)" if kind == "tau"
                            else "of recurrent weights") + f" to perturb as {kind}"}
            continue
        curve = []
        for e in ctx.options["eps"]:
            ctx.say(f"perturbation {kind} eps={e}")
            rel = [ctx.stream_accuracy(perturbed(model, kind, e, generator=ctx.generator))
                   / base for _ in range(1 if e == 0 else ctx.options["n_draws"])]
            curve.append({"eps": e, "rel_mean": float(np.mean(rel)),
                          "rel_sd": float(np.std(rel)), "draws": rel})
        res[kind] = curve
    return {"base_accuracy": base, "perturbation": res}


@figure("perturbation", analysis="perturbation")
def perturbation_figure(entries: list[Entry], canvas):
    """Relative accuracy against eps, one panel per perturbed parameter."""
    kinds = sorted({k for e in entries for k, c in e.analysis["perturbation"].items()
                    if isinstance(c, list)})
    if not kinds:
        return None
    fig, axes = canvas.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.2), squeeze=False)
    rows = []
    styles = run_styles(entries, canvas)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for e, (label, color) in zip(entries, styles, strict=True):
            curve = e.analysis["perturbation"].get(kind)
            if not isinstance(curve, list) or not curve:
                continue
            eps = [p["eps"] for p in curve]
            ax.errorbar(eps, [p["rel_mean"] for p in curve], [p["rel_sd"] for p in curve],
                        fmt="o-", color=color, label=label, capsize=2)
            rows += [[label, kind, p["eps"], f"{p['rel_mean']:.3f}", f"{p['rel_sd']:.3f}"]
                     for p in curve]
        ax.set(xlabel="eps, relative size of the perturbation",
               ylabel="accuracy / intact accuracy", ylim=(0, 1.1),
               title=f"Perturbing {kind} (mean ± sd over draws)")
        ax.legend(loc="lower left", framealpha=0.8, fontsize=8)
        skipped = [label for e, (label, _) in zip(entries, styles, strict=True)
                   if isinstance(e.analysis["perturbation"].get(kind), dict)]
        if skipped:
            ax.text(0.98, 0.04, f"no parameter tau to perturb: {', '.join(skipped)}", ha="right",
                    va="bottom", transform=ax.transAxes, color="#666", fontsize=8)
    rows += [[label, kind, "", "skipped", c["skipped"]]
             for e, (label, _) in zip(entries, styles, strict=True)
             for kind, c in e.analysis["perturbation"].items() if isinstance(c, dict)]
    return fig, ["run", "perturbed", "eps", "rel. acc (mean)", "sd"], rows
