"""Finding 5: standard continual-learning methods against forgetting on the N-parity curriculum.

The toolkit's own benchmark of the standard methods: a leaky RNN learns N-parity for N = 2..6
one experience after another, a head per experience (task-incremental), with fine-tuning
(the baseline that forgets), EWC (Kirkpatrick et al. 2017), experience replay from a reservoir
buffer (Rolnick et al. 2019; Chaudhry et al. 2019), the multi-head curriculum's rehearsal of
every earlier N (Khajehabdollahi et al. 2024) and a task-conditioned hypernetwork (von Oswald
et al. 2020). Every method has the same schedule and its default options (nothing is tuned to
agree). From the accuracy matrix R of each run (`seqmem.continual.metrics`): average accuracy
ACC, backward transfer BWT and forgetting F, mean ± sd over the seeds.

None of the papers measured this setting, so the paper's table gives each source's claim and
"no published number for this setting". The verdict checks the claims on our numbers, with the
thresholds below: fine-tuning forgets (F > `FORGETS`); EWC and replay forget less than
fine-tuning (by at least `MARGIN`); the multi-head curriculum and the hypernetwork keep the
earlier experiences (F <= `KEEPS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seqmem.report.render import CANVAS
from seqmem.reproduce.base import (
    Outcome,
    fmt,
    fmt_mean_sd,
    mean_sd,
    reproduction,
    run_experiment_sweep,
    save_figure,
    write_page,
)
from seqmem.store import RunStore

NAME = "continual_table"
TITLE = ("Fine-tuning forgets earlier N; EWC and replay forget less; multi-head rehearsal and "
         "a hypernetwork keep them (N-parity, task-incremental)")
DIRECTORY = "experiments/continual_table"
METHODS = ("finetune", "ewc", "replay", "multihead", "hnet")

#: fine-tuning "forgets" when its mean forgetting exceeds this (accuracy, a fraction)
FORGETS = 0.10
#: a method forgets "less than fine-tuning" when its mean forgetting is lower by at least this
MARGIN = 0.05
#: a method "keeps" the earlier experiences when its mean forgetting is at most this
KEEPS = 0.05

#: The sources and what each claims (no paper measured N-parity with a leaky RNN).
NO_NUMBER = "no published number for this setting"
PAPER = {
    "finetune": ("McCloskey & Cohen 1989; French 1999 (catastrophic interference)",
                 "sequential training forgets the earlier tasks"),
    "ewc": ("Kirkpatrick et al. 2017 (PNAS), Overcoming catastrophic forgetting in neural "
            "networks, Fig. 2A", "forgets less than plain SGD fine-tuning"),
    "replay": ("Rolnick et al. 2019 (NeurIPS), Experience replay for continual learning; "
               "Chaudhry et al. 2019, On tiny episodic memories (reservoir buffer)",
               "forgets less than fine-tuning"),
    "multihead": ("Khajehabdollahi et al. 2024 (ICLR), Emergent mechanisms for long "
                  "timescales ..., multi-head curriculum", "keeps every earlier N"),
    "hnet": ("von Oswald et al. 2020 (ICLR), Continual learning with hypernetworks",
             "near-zero forgetting in the task-incremental setting"),
}
CLAIMS = {"finetune": "forgets", "ewc": "less", "replay": "less", "multihead": "keeps",
          "hnet": "keeps"}


def by_method(summaries: dict[str, dict]) -> dict[str, list[dict]]:
    """The done runs' summaries grouped by method, in the order of `METHODS` (then others),
    each group sorted by seed."""
    groups: dict[str, list[dict]] = {}
    for s in summaries.values():
        if s.get("status", "done") == "done" and "avg_acc" in s:
            groups.setdefault(s["method"], []).append(s)
    order = [m for m in METHODS if m in groups] + sorted(set(groups) - set(METHODS))
    return {m: sorted(groups[m], key=lambda s: s.get("seed", 0)) for m in order}


def our_table(groups: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Per method: ACC, BWT, forgetting, FWT as mean ± sd over seeds, and the seeds."""
    header = ["method", "ACC", "BWT", "forgetting", "FWT", "seeds"]
    keys = ("avg_acc", "bwt", "forgetting", "fwt")
    rows = [[m, *(fmt_mean_sd((s.get(k) for s in runs), fixed=True) for k in keys),
             ",".join(str(s.get("seed")) for s in runs)] for m, runs in groups.items()]
    return header, rows


def paper_table() -> tuple[list[str], list[list[str]]]:
    """Per method: the source, its claim, and that no paper measured this setting."""
    return (["method", "source", "claim", "published number"],
            [[m, src, claim, NO_NUMBER] for m, (src, claim) in PAPER.items()])


def judge(groups: dict[str, list[dict]]) -> tuple[str, str, dict[str, bool]]:
    """The verdict, its reason and each method's claim checked (see the module docstring):
    all claims hold: "reproduced"; some: "partly"; none (or no fine-tuning baseline): "not
    reproduced". A method without runs is left out of the checks."""
    F = {m: mean_sd(s.get("forgetting") for s in runs)[0] for m, runs in groups.items()}
    base = F.get("finetune", math.nan)
    checks: dict[str, bool] = {}
    parts = []
    for m, claim in CLAIMS.items():
        if m not in F or not math.isfinite(F[m]):
            continue
        if claim == "forgets":
            ok = F[m] > FORGETS
            parts.append(f"fine-tuning forgot F = {fmt(F[m])} ({'above' if ok else 'not above'}"
                         f" {FORGETS})")
        elif claim == "less":
            if not math.isfinite(base):
                continue
            ok = F[m] <= base - MARGIN
            parts.append(f"{m} F = {fmt(F[m])} ({'at least' if ok else 'less than'} {MARGIN} "
                         f"below fine-tuning)")
        else:
            ok = F[m] <= KEEPS
            parts.append(f"{m} F = {fmt(F[m])} ({'at most' if ok else 'above'} {KEEPS})")
        checks[m] = ok
    n_ok = sum(checks.values())
    if not checks or "finetune" not in checks:
        verdict = "not reproduced"
    else:
        verdict = ("reproduced" if n_ok == len(checks) else "partly" if n_ok else
                   "not reproduced")
    failed = [m for m, ok in checks.items() if not ok]
    reason = (f"{n_ok} of {len(checks)} claims hold on the mean forgetting over seeds: "
              + "; ".join(parts) + ".")
    if failed:
        reason += (f" Not holding: {', '.join(failed)}; likely causes: our scale (a small "
                   f"leaky RNN, short N, a few hundred steps per experience) and every method "
                   f"at its default options, untuned for this task.")
    return verdict, reason, checks


def metrics_figure(groups: dict[str, list[dict]], canvas=CANVAS):
    """ACC, BWT and forgetting per method: bars of the mean, error bars of the sd, a dot per
    seed (the axes of the methods' comparison tables, drawn)."""
    fig, axes = canvas.subplots(1, 3, figsize=(9.5, 3.2))
    names = list(groups)
    x = np.arange(len(names))
    for ax, (key, label) in zip(axes, (("avg_acc", "average accuracy ACC"),
                                       ("bwt", "backward transfer BWT"),
                                       ("forgetting", "forgetting F")), strict=True):
        for i, m in enumerate(names):
            vals = [s.get(key) for s in groups[m]]
            mu, sd, n = mean_sd(vals)
            ax.bar(i, mu, yerr=sd if n > 1 else None, color=f"C{i}", alpha=0.7, capsize=3,
                   width=0.7)
            ax.plot([i] * n, [v for v in vals if v is not None], "o", color="k", ms=3)
        ax.axhline(0, color="#888", lw=0.6)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel(f"{label} (fraction)")
        ax.set_title(label, fontsize=9)
    n_seeds = max(len(r) for r in groups.values())
    fig.suptitle(f"N-parity curriculum, a head per N: mean ± sd over {n_seeds} seeds "
                 f"(dots: seeds)", fontsize=9)
    return fig


def final_accuracy_figure(groups: dict[str, list[dict]], canvas=CANVAS):
    """Accuracy on each experience (N) after the last one, per method, mean ± sd over seeds
    (the axes of Kirkpatrick et al. 2017, Fig. 2A: accuracy per task), chance at 0.5."""
    fig, ax = canvas.subplots(figsize=(6.0, 3.4))
    for i, (m, runs) in enumerate(groups.items()):
        mats = [np.asarray(s["R"], dtype=float) for s in runs if "R" in s]
        if not mats:
            continue
        last = np.stack([R[-1] for R in mats])  # (seeds, T)
        names = runs[0].get("experiences") or [f"N={k + 2}" for k in range(last.shape[1])]
        n_vals = [int(str(e).split("=")[-1]) for e in names]
        sd = last.std(axis=0, ddof=1) if len(last) > 1 else None
        ax.errorbar(n_vals, last.mean(axis=0), yerr=sd, marker="o", ms=4, capsize=3,
                    color=f"C{i}", label=m)
    ax.axhline(0.5, color="#888", ls="--", lw=0.8, label="chance")
    ax.set_xlabel("experience: N of N-parity (trained in this order)")
    ax.set_ylabel("accuracy after the last experience")
    ax.set_ylim(0.4, 1.02)
    canvas.integer_axis(ax, "x")
    canvas.legend(ax)
    return fig


@reproduction(NAME, title=TITLE,
              paper="Kirkpatrick et al. 2017 (EWC); Rolnick et al. 2019 (replay); "
                    "von Oswald et al. 2020 (hypernetworks); Khajehabdollahi et al. 2024 "
                    "(multi-head)",
              budget="about 8 min on 2 shared cores (15 runs, two at a time; quick: about "
                     "3 min)",
              directory=DIRECTORY)
def run(store: RunStore, *, quick: bool = False,
        progress: Callable[[str], None] | None = None) -> Outcome:
    """Run the sweep (full or quick), tabulate ACC, BWT and forgetting per method, draw the
    figures, judge the claims and write the page under the store's root."""
    summaries = run_experiment_sweep(store, DIRECTORY, quick=quick, progress=progress)
    return outcome_of(summaries, Path(store.root), quick=quick)


def outcome_of(summaries: dict[str, dict], root: Path, *, quick: bool = False) -> Outcome:
    """The Outcome of the runs' summaries: tables, verdict, figures and page under `root`."""
    groups = by_method(summaries)
    verdict, reason, _ = judge(groups)
    if quick:
        reason = "Quick form (N <= 4, 150 steps per experience, 2 seeds). " + reason
    figures = []
    if groups:
        figures = [save_figure(metrics_figure(groups), root, NAME, "metrics"),
                   save_figure(final_accuracy_figure(groups), root, NAME, "final_accuracy")]
    outcome = Outcome(our_table(groups), paper_table(), verdict, reason, None, figures)
    outcome.page = write_page(root, NAME, TITLE, outcome, figures)
    return outcome
