"""Ablation at the last stage (Khajehabdollahi et al., ICLR 2024): the accuracy on the streaming
task (the head of the last N) with units of the last block silenced (`probes.features_silenced`:
held at zero at every step, so they reach neither the recurrence nor the read-out), over the
accuracy of the intact network; and the report's figures.

What the authors do (LevinaLab/rnn_timescale_public, `analysis/ablations/compute_ablate_tau.py`
with `src/utils/accuracy_perturbation_ablation.py`, figure 7 of the paper): units are chosen by
their single-unit tau (`rnn.taus`, not tau_net); the 20 shortest and the 20 longest of 500
(`np.argsort(taus)[:20]`, `[-20:]`) are ablated one at a time (their rows and columns of W_hh,
their input weights and their read-out column set to zero), accuracy over 10 streams of 1,000
steps after 100 of warm-up, and the figure shows the mean over the 20 units of the relative
accuracy (acc - 0.5) / (max baseline - 0.5), chance-normalised. Ties in tau are broken by
argsort's order there.

Here:

- `single`: as the authors, the `round(4 % of d)` (20 of 500) shortest and longest units, each
  ablated alone, the mean over those units of acc / base and of (acc - 0.5) / (base - 0.5)
  (the authors' measure); ties broken at random as below, mean and sd over the draws;
- `longest_rel` / `shortest_rel` (the headline): the one unit of longest / shortest tau. Many
  units can share the extreme value (tau is clamped at 1, and a trained network often has a
  quarter of its units there), so ties are broken at random, `ablation_draws` draws of a
  seeded generator; the mean and sd over draws are reported;
- `curve`: the k units of longest tau, of shortest tau, and k random units (the control)
  ablated together, for k = 1 and `ablation_fractions` of the units, mean and sd over the draws.
"""

from __future__ import annotations

import numpy as np
import torch

from seqmem.analysis.context import Context
from seqmem.analysis.registry import Entry, analysis, figure, run_styles

ORDERS = ("longest", "shortest", "random")  # which k units are ablated together
FRACTIONS = (0.05, 0.1, 0.25, 0.5)  # k as fractions of the units (k = 1 always)
SINGLE_FRACTION = 0.04  # the authors' 20 of 500 units, each ablated alone


def _headline(w: dict) -> dict:
    a = w.get("ablation")
    if not a:
        return {}
    # analyses written before ties were drawn at random have no sd: one draw, sd 0
    return {"ablate_longest_rel": a["longest_rel"],
            "ablate_longest_rel_sd": a.get("longest_rel_sd", 0.0),
            "ablate_shortest_rel": a["shortest_rel"],
            "ablate_shortest_rel_sd": a.get("shortest_rel_sd", 0.0)}


def ablation_ks(d: int, fractions=FRACTIONS) -> list[int]:
    """k = 1 and round(f d) for f in `fractions` (at least 1, at most d), ascending, unique."""
    return sorted({1, *(min(d, max(1, round(f * d))) for f in fractions)})


def tau_order(tau: np.ndarray, order: str, perm: np.ndarray) -> np.ndarray:
    """Units sorted by tau, longest or shortest first, ties in the order of `perm` (a random
    permutation of the units); order "random": `perm` itself."""
    if order == "random":
        return perm
    key = -tau[perm] if order == "longest" else tau[perm]
    return perm[np.argsort(key, kind="stable")]


def _mean_sd(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    if np.all(x == x.flat[0]):  # one value: exactly it, sd exactly 0
        return float(x.flat[0]), 0.0
    return float(np.mean(x)), float(np.std(x, ddof=1))


@analysis("ablation", needs="last_stage", writes=("base_accuracy", "ablation"),
          headline={"ablate_longest_rel": "ablate longest-tau unit (rel. acc.)",
                    "ablate_longest_rel_sd": "sd over tie draws",
                    "ablate_shortest_rel": "ablate shortest-tau unit (rel. acc.)",
                    "ablate_shortest_rel_sd": "sd over tie draws"},
          headline_of=_headline,
          options={"ablation_draws": 5, "ablation_fractions": FRACTIONS})
def ablation(ctx: Context) -> dict:
    """Relative accuracy with units silenced, chosen by tau (see the module docstring);
    ablation is None for a mixer without timescales."""
    base = ctx.base_accuracy()
    model = ctx.model()
    ts = model.timescales()
    if ts is None:
        return {"base_accuracy": base, "ablation": None}
    tau = ts.detach().double().cpu().numpy()  # (d,)
    d = tau.size
    memo: dict[frozenset, float] = {}

    def rel(units) -> float:
        # the streams are the same at every call, so one set of units has one accuracy
        key = frozenset(int(u) for u in units)
        if key not in memo:
            memo[key] = ctx.stream_accuracy(model, silence=sorted(key)) / base
        return memo[key]

    n_draws = max(1, int(ctx.options["ablation_draws"]))
    perms = [torch.randperm(d, generator=ctx.generator).numpy() for _ in range(n_draws)]
    ks = ablation_ks(d, ctx.options["ablation_fractions"])
    ctx.say(f"ablation: {len(ORDERS)} orders x {len(ks)} k x {n_draws} draws")
    curve = {}
    for order in ORDERS:
        orders = [tau_order(tau, order, p) for p in perms]
        pts = []
        for k in ks:
            draws = [rel(o[:k]) for o in orders]
            m, sd = _mean_sd(draws)
            pts.append({"k": k, "rel_mean": m, "rel_sd": sd, "draws": draws})
        curve[order] = pts
    longest = [tau_order(tau, "longest", p)[0] for p in perms]
    shortest = [tau_order(tau, "shortest", p)[0] for p in perms]

    n_single = max(1, round(SINGLE_FRACTION * d))
    single = {"n_units": n_single}
    for order in ("shortest", "longest"):
        units = [tau_order(tau, order, p)[:n_single] for p in perms]  # per draw
        r = [[rel([u]) for u in us] for us in units]
        chance = [[(x * base - 0.5) / (base - 0.5) if base != 0.5 else float("nan") for x in rs]
                  for rs in r]
        single[order] = {"units": [[int(u) for u in us] for us in units],
                         "tau_mean": float(np.mean([tau[us].mean() for us in units])),
                         "rel": _mean_sd([np.mean(rs) for rs in r]),
                         "chance_rel": _mean_sd([np.mean(cs) for cs in chance])}

    lr, lr_sd = curve["longest"][0]["rel_mean"], curve["longest"][0]["rel_sd"]
    sr, sr_sd = curve["shortest"][0]["rel_mean"], curve["shortest"][0]["rel_sd"]
    return {"base_accuracy": base, "ablation": {
        "N": ctx.N, "d": d, "base_accuracy": base, "draws": n_draws,
        "longest_tau": float(tau.max()), "n_longest_tied": int(np.sum(tau == tau.max())),
        "longest_tau_units": [int(u) for u in longest],
        "longest_rel": lr, "longest_rel_sd": lr_sd,
        "shortest_tau": float(tau.min()), "n_shortest_tied": int(np.sum(tau == tau.min())),
        "shortest_tau_units": [int(u) for u in shortest],
        "shortest_rel": sr, "shortest_rel_sd": sr_sd,
        "curve": curve, "single": single,
    }}


@figure("ablation", analysis="ablation")
def ablation_figure(entries: list[Entry], canvas):
    """Relative accuracy with the longest- and the shortest-tau unit silenced, per run (mean
    and sd over the draws that break ties in tau)."""
    fig, ax = canvas.subplots(figsize=(5.6, 3.4))
    rows = []
    x = np.arange(2)
    width = 0.8 / len(entries)
    for i, (e, (label, color)) in enumerate(zip(entries, run_styles(entries, canvas),
                                                strict=True)):
        a = e.analysis["ablation"]
        vals = [a["longest_rel"], a["shortest_rel"]]
        sds = [a.get("longest_rel_sd", 0.0), a.get("shortest_rel_sd", 0.0)]
        ax.bar(x + (i - (len(entries) - 1) / 2) * width, vals, width, yerr=sds, capsize=3,
               color=color, label=f"{label} (N = {a['N']})")
        rows.append([label, a["N"], f"{a['longest_tau']:.3f}", a.get("n_longest_tied", ""),
                     f"{vals[0]:.3f} ± {sds[0]:.3f}", f"{a['shortest_tau']:.3f}",
                     a.get("n_shortest_tied", ""), f"{vals[1]:.3f} ± {sds[1]:.3f}"])
    ax.set_xticks(x, ["longest-tau unit", "shortest-tau unit"])
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set(ylabel="accuracy / intact accuracy",
           title="Silencing one unit (ties in tau broken at random; mean ± sd)")
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return fig, ["run", "N", "longest tau", "units tied", "rel. acc", "shortest tau",
                 "units tied", "rel. acc"], rows


@figure("ablation_curve", analysis="ablation")
def ablation_curve_figure(entries: list[Entry], canvas):
    """Relative accuracy with the k longest-tau, k shortest-tau or k random units silenced
    together, against k; one panel per run, mean ± sd band over the draws."""
    entries = [e for e in entries if (e.analysis.get("ablation") or {}).get("curve")]
    if not entries:
        return None
    fig, axes = canvas.subplots(1, len(entries), figsize=(4.4 * len(entries) + 1.4, 3.4),
                                squeeze=False)
    styles = {"longest": ("#8C7AAE", "o-"), "shortest": ("#AA9C39", "s-"),
              "random": ("#777777", "^--")}
    rows = []
    for ax, e, (label, _) in zip(axes[0], entries, run_styles(entries, canvas), strict=True):
        a = e.analysis["ablation"]
        for order, pts in a["curve"].items():
            k = np.array([p["k"] for p in pts])
            m = np.array([p["rel_mean"] for p in pts])
            sd = np.array([p["rel_sd"] for p in pts])
            c, fmt = styles.get(order, ("C0", "o-"))
            ax.plot(k, m, fmt, color=c, ms=4, label=f"{order}" + (" tau first" if order !=
                                                                  "random" else " units"))
            ax.fill_between(k, m - sd, m + sd, color=c, alpha=0.2, lw=0)
            rows += [[label, order, p["k"], f"{p['rel_mean']:.3f}", f"{p['rel_sd']:.3f}"]
                     for p in pts]
        ax.axhline(1.0, color="k", lw=0.5)
        ax.locator_params(axis="x", integer=True)
        ax.set(xlabel=f"units silenced, k (of {a.get('d', '?')})",
               ylabel="accuracy / intact accuracy",
               title=f"{label}, N = {a['N']}: silencing k units ({a.get('draws', 1)} draws)")
        ax.title.set_fontsize(9)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return fig, ["run", "order", "k", "rel. acc (mean)", "sd"], rows
