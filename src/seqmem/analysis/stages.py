"""Measures of every curriculum stage, after Khajehabdollahi et al. (ICLR 2024):

- timescales: each stage's single-unit timescales (`mixer.timescales()`: tau of the leaky RNN,
  derived from the gates for GRU/LSTM): mean, sd, max and min, and every unit's value;
- tau_net: each stage's network-mediated timescale (`timescales.network_timescales`), the
  mean over units with tau_net > 1, at a few stages spread over the curriculum;
- dimensionality: the principal components explaining 90 % of the variance of the activity
  driven by random bits, at the same stages;

and the report's figure of both timescales against the N solved.
"""

from __future__ import annotations

import numpy as np
import torch

from seqmem.analysis.context import Context
from seqmem.analysis.registry import Entry, analysis, figure
from seqmem.analysis.timescales import dimensionality, network_timescales

# the drive of the dimensionality measure: trials, steps kept, steps discarded first
DIM_TRIALS, DIM_STEPS, DIM_BURN_IN = 4, 1000, 200


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    return {"mean": float(np.mean(x)), "sd": float(np.std(x, ddof=1)) if x.size > 1 else 0.0,
            "max": float(np.max(x)), "min": float(np.min(x))}


@analysis("timescales", needs="each_stage", writes=("tau", "tau_values"))
def stage_timescales(ctx: Context) -> dict:
    """tau statistics and every unit's tau at this stage; nothing for a mixer without
    timescales."""
    ts = ctx.model().timescales()
    if ts is None:
        return {}
    tau = ts.detach().double().cpu().numpy()  # (d,)
    return {"tau": _stats(tau), "tau_values": tau.round(5).tolist()}


@analysis("tau_net", needs="spread_stages", writes=("tau_net_mean", "tau_net_valid"),
          headline={"tau_net_mean": "tau_net mean (last N)"}, options={"tau_net_steps": 2000})
def stage_tau_net(ctx: Context) -> dict:
    """Mean tau_net over the units with tau_net > 1, and how many they are, driven by
    `tau_net_steps` random bits per trial."""
    r = network_timescales(ctx.model(), n_steps=ctx.options["tau_net_steps"],
                           generator=ctx.generator)
    return {"tau_net_mean": float(r["mean_tau_net"]), "tau_net_valid": int(r["n_valid"])}


@analysis("dimensionality", needs="spread_stages", writes=("dimensionality",),
          headline={"dimensionality": "dimensionality (last N, PCs for 90 % of the variance)"})
def stage_dimensionality(ctx: Context) -> dict:
    """Principal components explaining 90 % of the variance of the last block's activity,
    driven as for tau_net: p ~ U(0, 1) per trial, bits ~ Bernoulli(p)."""
    model = ctx.model()
    p = next(model.parameters())
    g = ctx.generator
    prob = torch.rand(DIM_TRIALS, 1, 1, generator=g, dtype=torch.float64)  # (b, 1, 1)
    bits = torch.bernoulli(prob.expand(DIM_TRIALS, DIM_BURN_IN + DIM_STEPS, 1).contiguous(),
                           generator=g)  # (b, t, 1)
    with torch.no_grad():
        h, _ = model.features(bits.to(device=p.device, dtype=p.dtype),
                              model.init_state(DIM_TRIALS, generator=g))  # (b, t, d)
    return {"dimensionality": int(dimensionality(h[:, DIM_BURN_IN:].double().cpu().numpy()))}


def _tau_rows(e: Entry) -> list[tuple[int, float, float, float | None]]:
    """(N, tau mean, tau sd, tau_net) per solved N: from the analysis, else the summary."""
    stages = e.analysis.get("stages")
    if stages:
        return [(s["N"], s["tau"]["mean"], s["tau"]["sd"], s.get("tau_net_mean"))
                for s in stages if "tau" in s]
    return [(s["N"], s["tau_mean"], s["tau_sd"], None) for s in e.summary.get("stages", [])
            if "tau_mean" in s]


@figure("tau_vs_N", analysis="stages", summary="stages")
def tau_figure(entries: list[Entry], canvas):
    """Single-unit tau (mean ± sd) and tau_net against the N solved, per run."""
    if not any(_tau_rows(e) for e in entries):
        return None
    fig, axes = canvas.subplots(1, 2, figsize=(9, 3.4))
    rows = []
    for i, e in enumerate(entries):
        r = _tau_rows(e)
        if not r:
            continue
        n = np.array([x[0] for x in r])
        m = np.array([x[1] for x in r])
        sd = np.array([x[2] for x in r])
        c = canvas.color(e, i)
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
        canvas.legend(ax)
    return fig, ["run", "N", "tau mean", "tau sd", "tau_net"], rows
