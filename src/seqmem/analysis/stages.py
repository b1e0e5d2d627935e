"""Measures of every curriculum stage, after Khajehabdollahi et al. (ICLR 2024):

- timescales: each stage's single-unit timescales (`mixer.timescales()`: tau of the leaky RNN,
  derived from the gates for GRU/LSTM): mean, sd, max and min, and every unit's value;
- tau_net: each stage's network-mediated timescale (`timescales.network_timescales`), the
  mean over units with tau_net > 1, at a few stages spread over the curriculum;
- dimensionality: the principal components explaining 90 % of the variance of the activity
  driven by random bits, at the same stages;

and the report's figure of both timescales against the N solved: tau as its median and
10-90 % band over units (tau >= 1, so no band below it), tau_net as mean ± sd over the units
with tau_net > 1, an N the run was training on but did not solve marked apart.
"""

from __future__ import annotations

import numpy as np
import torch

from seqmem.analysis.context import Context
from seqmem.analysis.registry import Entry, analysis, figure, run_styles
from seqmem.analysis.timescales import dimensionality, network_timescales

XLABEL = "N solved (dotted: trained on, not solved)"
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


@analysis("tau_net", needs="spread_stages",
          writes=("tau_net_mean", "tau_net_sd", "tau_net_valid"),
          headline={"tau_net_mean": "tau_net mean (last N)"}, options={"tau_net_steps": 2000})
def stage_tau_net(ctx: Context) -> dict:
    """Mean and sd of tau_net over the units with tau_net > 1, and how many they are, driven
    by `tau_net_steps` random bits per trial (the autocorrelation averages the trials)."""
    r = network_timescales(ctx.model(), n_steps=ctx.options["tau_net_steps"],
                           generator=ctx.generator)
    valid = r["tau_net"][r["tau_net"] > 1]
    return {"tau_net_mean": float(r["mean_tau_net"]),
            "tau_net_sd": float(np.std(valid, ddof=1)) if valid.size > 1 else 0.0,
            "tau_net_valid": int(r["n_valid"])}


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


def _tau_rows(e: Entry) -> list[dict]:
    """Per solved N: N, tau's median and 10 % / 90 % quantiles over units (from the analysis's
    tau_values; the summary gives only the mean, drawn without a band), tau_net mean and sd."""
    stages = e.analysis.get("stages")
    if stages:
        out = []
        for s in stages:
            if "tau" not in s:
                continue
            v = np.asarray(s.get("tau_values") or [s["tau"]["mean"]], dtype=float)
            lo, med, hi = np.quantile(v, (0.1, 0.5, 0.9))
            out.append({"N": s["N"], "mid": float(med), "lo": float(lo), "hi": float(hi),
                        "mean": s["tau"]["mean"], "tau_net": s.get("tau_net_mean"),
                        "tau_net_sd": s.get("tau_net_sd"), "n_valid": s.get("tau_net_valid")})
        return out
    return [{"N": s["N"], "mid": s["tau_mean"], "lo": None, "hi": None, "mean": s["tau_mean"],
             "tau_net": None, "tau_net_sd": None, "n_valid": None}
            for s in e.summary.get("stages", []) if "tau_mean" in s]


def _unsolved(e: Entry) -> int | None:
    """The N the run was training on when it stopped, if it did not solve it."""
    n, solved = e.summary.get("n_current"), e.summary.get("n_solved")
    return n if isinstance(n, int) and isinstance(solved, int) and n > solved else None


@figure("tau_vs_N", analysis="stages", summary="stages")
def tau_figure(entries: list[Entry], canvas):
    """Single-unit tau (median, whiskers from the 10 % to the 90 % quantile over units) and
    tau_net (mean ± standard error over the units with tau_net > 1; each unit's tau_net is
    fitted to the autocorrelation averaged over trials) against the N solved, per run; runs
    are offset a little along N so that their whiskers do not hide each other, and an N a run
    trained on without solving it is a dotted line."""
    styles = run_styles(entries, canvas)
    drawn = [(i, e, _tau_rows(e)) for i, e in enumerate(entries)]
    drawn = [d for d in drawn if d[2]]
    if not drawn:
        return None
    fig, axes = canvas.subplots(1, 2, figsize=(10, 3.6))
    rows = []
    has_net = any(x["tau_net"] is not None and np.isfinite(x["tau_net"])
                  for _, _, r in drawn for x in r)
    for j, (i, e, r) in enumerate(drawn):
        label, c = styles[i]
        dx = 0.08 * (j - (len(drawn) - 1) / 2)
        n = np.array([x["N"] for x in r], dtype=float) + dx
        mid = np.array([x["mid"] for x in r])
        if all(x["lo"] is not None for x in r):
            err = [mid - [x["lo"] for x in r], [x["hi"] for x in r] - mid]
            axes[0].errorbar(n, mid, err, fmt="o-", color=c, ms=4, capsize=3, label=label)
        else:
            axes[0].plot(n, mid, "o-", color=c, ms=4, label=f"{label} (mean)")
        tn = [x for x in r if x["tau_net"] is not None and np.isfinite(x["tau_net"])]
        if tn:
            sem = [(x["tau_net_sd"] or 0.0) / np.sqrt(max(1, x["n_valid"] or 1)) for x in tn]
            axes[1].errorbar(np.array([x["N"] for x in tn], dtype=float) + dx,
                             [x["tau_net"] for x in tn], sem, fmt="o-", color=c, ms=4,
                             capsize=3)
        u = _unsolved(e)
        if u is not None:
            for ax in axes if has_net else axes[:1]:
                ax.axvline(u + dx, color=c, ls=":", lw=1.2)
            axes[0].plot([], [], ls=":", color=c, label=f"{label}: N = {u} not solved")
        fmt = "{:.3f}".format
        rows += [[label, x["N"], fmt(x["mid"]),
                  "" if x["lo"] is None else f"{fmt(x['lo'])} - {fmt(x['hi'])}", fmt(x["mean"]),
                  "" if x["tau_net"] is None else f"{x['tau_net']:.2f}",
                  "" if x["tau_net_sd"] is None else f"{x['tau_net_sd']:.2f}",
                  "" if x["n_valid"] is None else x["n_valid"]] for x in r]
    axes[0].set(xlabel=XLABEL, ylabel="single-unit tau (steps)",
                title="Single-unit tau: median and 10-90 % of units")
    axes[1].set(xlabel=XLABEL, ylabel="tau_net (steps)",
                title="Network timescale: mean ± s.e.m., units with tau_net > 1")
    for ax in axes:
        ax.title.set_fontsize(9)
        canvas.integer_axis(ax, "x")
    if not has_net:
        axes[1].set_xticks([])
        axes[1].text(0.5, 0.5, "not measured\n(seqmem analyze RUN --what tau_net)",
                     ha="center", va="center", transform=axes[1].transAxes, color="#888")
    axes[1].legend(*axes[0].get_legend_handles_labels(), loc="upper left",
                   bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return fig, ["run", "N", "tau median", "tau 10-90 %", "tau mean", "tau_net mean",
                 "tau_net sd", "units tau_net > 1"], rows
