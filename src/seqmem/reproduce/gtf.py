"""Generalised teacher forcing reconstructs chaos: Hess et al. 2023, at a 2-core-CPU scale.

Hess, Monfared, Brenner & Durstewitz, "Generalized teacher forcing for learning chaotic
dynamics", ICML 2023. Training a recurrent model on a chaotic system by backpropagation
through time suffers exploding gradients; forcing the latent state towards the data,
z~ = alpha z^ + (1 - alpha) z (GTF), with alpha chosen from the Jacobians' growth (adaptive
alpha), keeps the gradients bounded, and a shallow PLRNN (shPLRNN) so trained reproduces the
attractor's geometry and power spectrum (low D_stsp and D_H of free runs, Table 1 of the
paper, Lorenz-63 among its systems).

We train seqmem's shPLRNN (`plrnn`) on Lorenz-63 with ordinary teacher forcing (no GTF),
with latent GTF at a fixed alpha, and with the adaptive alpha
(`experiments/gtf/sweep.yaml`), and read D_stsp and D_H of free runs from the summaries
(`seqmem.analysis.dynamics.free_run_metrics`, run after training by the train job).

The verdict is computed from the numbers: a condition reconstructs the attractor when its mean
D_stsp is at most `GOOD_DSTSP` (1.0) and its mean D_H at most `GOOD_DH` (0.25), thresholds of
seqmem's choice (the paper's best Lorenz-63 models lie well below both). With the best GTF
condition (lowest mean D_stsp): "reproduced" when it reconstructs the attractor and beats no
GTF on both measures; "partly" when it beats no GTF on at least one measure by a factor of
`FACTOR` (1.2) or reconstructs the attractor; "not reproduced" otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from seqmem.report.render import CANVAS
from seqmem.reproduce.base import (
    Outcome,
    fmt,
    fmt_mean_sd,
    mean_sd,
    report_outcome,
    reproduction,
    run_experiment_sweep,
    save_figure,
)
from seqmem.store import RunStore

NAME = "gtf"
DIRECTORY = "experiments/gtf"
TITLE = ("Generalised teacher forcing: a shallow PLRNN trained with GTF reproduces the "
         "Lorenz-63 attractor (low D_stsp and D_H of free runs)")
PAPER = ("Hess, Monfared, Brenner & Durstewitz 2023 (ICML), Generalized teacher forcing for "
         "learning chaotic dynamics, Table 1")
NO_GTF = "no GTF (teacher forcing)"
METRICS = (("d_stsp", "D_stsp"), ("d_h", "D_H"))
GOOD_DSTSP, GOOD_DH, FACTOR = 1.0, 0.25, 1.2

# Table 1 of the paper: we do not have its Lorenz-63 values to hand, so the table gives the
# paper's setting and points to the table rather than a number we could not check.
PAPER_TABLE = (
    ["model (Lorenz-63)", "D_stsp", "D_H", "setting"],
    [["shPLRNN + GTF (adaptive alpha)", "see Table 1 of the paper",
      "see Table 1 of the paper", "Lorenz-63, dt 0.01, z-scored; free runs from test data"],
     ["claim", "low (attractor geometry reproduced)", "low (power spectrum reproduced)",
      "GTF's alpha bounds the Jacobian products: no exploding gradients"],
     ["measures", "KL of state-space occupation, 30 bins per dimension",
      "Hellinger distance of smoothed power spectra (sigma 20)", "as seqmem.analysis.dynamics"]],
)


def condition(summary: dict) -> str:
    """The row label of a run from its grid point: no GTF, GTF at a fixed alpha, or GTF with
    the adaptive alpha."""
    point = summary.get("point", {})
    alpha = point.get("train.gtf_alpha")
    if point.get("train.gtf", "input") != "latent" and alpha is None:
        return NO_GTF
    where = "latent GTF" if point.get("train.gtf") == "latent" else "input GTF"
    return f"{where}, adaptive alpha" if alpha == "adaptive" else f"{where}, alpha = {alpha}"


def collect(summaries: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """condition -> metric (d_stsp, d_h, eval_mse) -> its runs' values (finished runs with
    free-running metrics only)."""
    out: dict[str, dict[str, list[float]]] = {}
    for s in summaries.values():
        if s.get("status", "done") != "done" or "d_stsp" not in s:
            continue
        by = out.setdefault(condition(s), {})
        for key in ("d_stsp", "d_h", "eval_mse"):
            if s.get(key) is not None:
                by.setdefault(key, []).append(float(s[key]))
    return out


def order(names) -> list[str]:
    """No GTF first, then the fixed alphas, then the adaptive alpha."""
    return sorted(set(names), key=lambda n: (n != NO_GTF, "adaptive" in n, n))


def our_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per condition, mean ± sd over seeds of D_stsp, D_H and the one-step
    evaluation MSE."""
    header = ["condition", "D_stsp", "D_H", "one-step MSE (teacher forced)"]
    rows = [[c, *(fmt_mean_sd(data[c].get(k, [])) for k in ("d_stsp", "d_h", "eval_mse"))]
            for c in order(data)]
    return header, rows


def _mean(data: dict, cond: str, key: str) -> float:
    return mean_sd(data.get(cond, {}).get(key, []))[0]


def judge(data: dict) -> tuple[str, str]:
    """The verdict and its reason from the numbers (thresholds in the module docstring)."""
    gtf = [c for c in order(data) if c != NO_GTF]
    if NO_GTF not in data or not gtf:
        return "not reproduced", "The runs with and without GTF did not both finish."
    best = min(gtf, key=lambda c: (_mean(data, c, "d_stsp")
                                   if math.isfinite(_mean(data, c, "d_stsp")) else math.inf))
    b = {k: _mean(data, best, k) for k, _ in METRICS}
    n = {k: _mean(data, NO_GTF, k) for k, _ in METRICS}
    good = b["d_stsp"] <= GOOD_DSTSP and b["d_h"] <= GOOD_DH
    better = [b[k] < n[k] for k, _ in METRICS]
    clearly = [b[k] * FACTOR <= n[k] for k, _ in METRICS]
    if good and all(better):
        verdict = "reproduced"
    elif good or any(clearly):
        verdict = "partly"
    else:
        verdict = "not reproduced"
    reason = (f"Best GTF condition ({best}): D_stsp {fmt(b['d_stsp'])}, D_H {fmt(b['d_h'])}; "
              f"without GTF: D_stsp {fmt(n['d_stsp'])}, D_H {fmt(n['d_h'])} (means over "
              f"seeds; a reconstruction counts as good at D_stsp <= {GOOD_DSTSP} and D_H <= "
              f"{GOOD_DH}: {'yes' if good else 'no'}).")
    if verdict != "reproduced":
        seeds = max(len(v) for by in data.values() for v in by.values())
        reason += (f" Likely reason: our budget (a few hundred updates on a 2-core CPU, "
                   f"{seeds} seed{'s' if seeds > 1 else ''} per condition) is far below the "
                   f"paper's training, which runs for thousands of epochs.")
    return verdict, reason


def figure(data: dict, root: Path, stem: str = "dstsp_dh_by_condition") -> Path:
    """D_stsp and D_H of the free runs per training condition: one dot per seed, the mean as
    a bar (the paper's two measures of Table 1)."""
    conds = order(data)
    fig, axes = CANVAS.subplots(1, 2, figsize=(9.0, 3.6), squeeze=False)
    colors = {c: f"C{i}" for i, c in enumerate(conds)}
    for ax, (key, label) in zip(axes[0], METRICS, strict=True):
        for i, c in enumerate(conds):
            vals = data[c].get(key, [])
            m = mean_sd(vals)[0]
            if math.isfinite(m):
                ax.bar(i, m, color=colors[c], alpha=0.35, width=0.6)
            ax.plot([i] * len(vals), vals, "o", color=colors[c], markersize=5,
                    markeredgecolor="black", markeredgewidth=0.5)
        ax.set_xticks(range(len(conds)),
                      [c.replace(", ", ",\n").replace(" (", "\n(") for c in conds])
        ax.set_ylabel({"d_stsp": "D_stsp (KL divergence, nats)",
                       "d_h": "D_H (Hellinger distance, 0..1)"}[key])
        ax.set_title(f"{label} of free runs (lower is better)")
        if key == "d_h":
            ax.set_ylim(0, 1)
        else:
            CANVAS.auto_log(ax, [v for c in conds for v in data[c].get(key, [])], "y")
        ax.grid(alpha=0.3, axis="y")
    last = axes[0][-1]
    last.plot([], [], "o", color="#999", markeredgecolor="black", markeredgewidth=0.5,
              label="one seed")
    last.bar([0], [0], color="#999", alpha=0.35, label="mean over seeds")  # legend only
    CANVAS.legend(last)
    fig.suptitle("shPLRNN on Lorenz-63: training with and without generalised teacher "
                 "forcing", fontsize=10)
    return save_figure(fig, root, NAME, stem)


def outcome_of(summaries: dict[str, dict], root: Path, *, quick: bool = False) -> Outcome:
    """The tables, verdict, figure and page of a set of run summaries (quick: the reason
    says that the smoke-test budget checks the pipeline, not the finding)."""
    note = "a smoke test of 10 updates: too short to learn the system, not the finding's test"
    return report_outcome(NAME, TITLE, collect(summaries), judge=judge, table=our_table,
                          paper=PAPER_TABLE, figure=figure, root=root,
                          quick_note=note if quick else None)


@reproduction(NAME, title=TITLE, paper=PAPER,
              budget="about 15 min on 2 cores, 3 seeds (quick: under 1 min)", directory=DIRECTORY)
def run(store: RunStore, *, quick: bool = False,
        progress: Callable[[str], None] | None = None) -> Outcome:
    """Run the experiment's sweep (quick: its smoke-test form) and report it."""
    summaries = run_experiment_sweep(store, DIRECTORY, quick=quick, progress=progress)
    return outcome_of(summaries, Path(store.root), quick=quick)
