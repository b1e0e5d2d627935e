"""Recall needs state: Zoology's MQAR against model width (Arora et al. 2023), at CPU scale.

Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Re, "Zoology: measuring and improving
recall in efficient language models", 2023 (ICLR 2024), Fig. 2: on multi-query associative
recall (MQAR) attention solves the task at every model width, while the efficient
(recurrent and gated-convolution) models need a width, hence a state, that grows with the
number of key-value pairs and the sequence length; plotted against state size the recurrent
models' accuracy rises with the state.

We train attention and eight efficient mixers (linear attention, gla, gated_deltanet, mamba,
mamba2, s4d, rat and a GRU) at several widths on MQAR (`experiments/zoology/sweep.yaml`) and
read each run's evaluation accuracy (`acc_mean`, over the queried positions) and its state
size (`state_size`, floats per sequence; attention's KV cache at the sequence length).

The verdict is computed from the numbers: attention "solves at every width" when its accuracy
is at least `SOLVED` (0.9) at each width run; the efficient models "need width" when, for at
least half of them, accuracy at the smallest width is at least `GAP` (0.2) below attention's
there and does not fall with width (largest width >= smallest). "reproduced": both; "partly":
one of them; "not reproduced": neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from seqmem.report.render import CANVAS
from seqmem.reproduce.base import (
    Outcome,
    fmt,
    mean_sd,
    report_outcome,
    reproduction,
    run_experiment_sweep,
    save_figure,
)
from seqmem.store import RunStore

NAME = "zoology"
DIRECTORY = "experiments/zoology"
TITLE = ("Zoology (MQAR): attention recalls at every width, efficient models need a state "
         "that grows with the number of pairs")
PAPER = ("Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Re 2023 (ICLR 2024), "
         "Zoology: measuring and improving recall in efficient language models, Fig. 2")
ATTENTION = "attention"
SOLVED, GAP = 0.9, 0.2

# Fig. 2 of the paper is a plot; we give what it shows, read qualitatively, not numbers read
# off the figure.
PAPER_TABLE = (
    ["model", "MQAR accuracy vs width (Fig. 2)", "setting"],
    [["attention", "near 1.0 at every width", "2 layers, widths 64..512"],
     ["efficient models (gated convolutions, recurrent)",
      "rises with width; lower at longer sequences and more pairs",
      "sequence lengths 64..512, vocabulary 8,192, learning rate swept"],
     ["against state size", "recurrent accuracy rises with the state; attention's state is "
      "its KV cache", "Fig. 2 and Sec. 4"]],
)


def collect(summaries: dict[str, dict]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """mixer -> d_model -> {"acc": accuracies, "state": state sizes} of its finished runs
    (one per seed)."""
    out: dict[str, dict[int, dict[str, list[float]]]] = {}
    for s in summaries.values():
        if s.get("status", "done") != "done" or s.get("acc_mean") is None:
            continue
        width = int(s.get("point", {}).get("model.d_model"))
        cell = out.setdefault(s["mixer"], {}).setdefault(width, {"acc": [], "state": []})
        cell["acc"].append(float(s["acc_mean"]))
        if s.get("state_size") is not None:
            cell["state"].append(float(s["state_size"]))
    return out


def acc(data: dict, mixer: str, width: int) -> float:
    """The mean accuracy over seeds of one mixer at one width (nan if not run)."""
    return mean_sd(data.get(mixer, {}).get(width, {}).get("acc", []))[0]


def order(mixers) -> list[str]:
    """Attention first, then the others by name."""
    return sorted(set(mixers), key=lambda m: (m != ATTENTION, m))


def our_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per mixer, the accuracy at each width and the state size (floats per
    sequence) at the largest width."""
    widths = sorted({w for by in data.values() for w in by})
    header = ["mixer", *(f"acc @ d_model {w}" for w in widths),
              f"state size @ d_model {widths[-1] if widths else ''} (floats)"]
    rows = []
    for m in order(data):
        state = mean_sd(data[m].get(widths[-1], {}).get("state", []))[0] if widths else math.nan
        rows.append([m, *(fmt(acc(data, m, w)) for w in widths), fmt(state, 4)])
    return header, rows


def judge(data: dict) -> tuple[str, str]:
    """The verdict and its reason from the numbers (thresholds in the module docstring)."""
    widths = sorted({w for by in data.values() for w in by})
    if ATTENTION not in data or len(data) < 2 or not widths:
        return "not reproduced", "Attention and at least one efficient model must finish."
    att = [acc(data, ATTENTION, w) for w in widths]
    att_solves = all(math.isfinite(a) and a >= SOLVED for a in att)
    small, large = widths[0], widths[-1]
    others = [m for m in order(data) if m != ATTENTION]
    need = []
    for m in others:
        a_small, a_large = acc(data, m, small), acc(data, m, large)
        need.append(math.isfinite(a_small) and a_small <= acc(data, ATTENTION, small) - GAP
                    and (len(widths) == 1 or a_large >= a_small))
    needs_width = sum(need) * 2 >= len(need)
    verdict = ("reproduced" if att_solves and needs_width
               else "partly" if att_solves or needs_width else "not reproduced")
    reason = (f"Attention: accuracy {', '.join(fmt(a, 2) for a in att)} at widths "
              f"{', '.join(map(str, widths))} (solves at every width: "
              f"{'yes' if att_solves else 'no'}, threshold {SOLVED}). Efficient models at "
              f"width {small} -> {large}: "
              + "; ".join(f"{m} {fmt(acc(data, m, small), 2)} -> {fmt(acc(data, m, large), 2)}"
                          for m in others)
              + f" ({sum(need)} of {len(need)} at least {GAP} below attention at width {small} "
              f"and not falling with width).")
    if verdict != "reproduced":
        reason += (" Likely reasons: our budget (a few hundred updates, one learning rate, one "
                   "seed) where the paper sweeps the learning rate and trains far longer, and "
                   "a small vocabulary and few pairs, which make recall easier for every "
                   "model.")
    return verdict, reason


def figure(data: dict, root: Path, stem: str = "mqar_accuracy_by_width") -> Path:
    """MQAR accuracy against model width (left, the axes of the paper's Fig. 2) and against
    state size in floats per sequence (right), one line per mixer, attention in black."""
    fig, axes = CANVAS.subplots(1, 2, figsize=(10.0, 3.8), squeeze=False)
    left, right = axes[0]
    widths = sorted({w for by in data.values() for w in by})
    states = []
    for i, m in enumerate(order(data)):
        ws = sorted(data[m])
        ys = [acc(data, m, w) for w in ws]
        st = [mean_sd(data[m][w]["state"])[0] for w in ws]
        style = ({"color": "black", "linewidth": 2.2, "marker": "s"} if m == ATTENTION
                 else {"color": f"C{i}", "linewidth": 1.4, "marker": "o"})
        left.plot(ws, ys, label=m, markersize=4, **style)
        keep = [(s, y) for s, y in zip(st, ys, strict=True) if math.isfinite(s)]
        if keep:
            right.plot(*zip(*keep, strict=True), label=m, markersize=4, **style)
            states += [s for s, _ in keep]
    left.set_xscale("log", base=2)
    left.set_xticks(widths, [str(w) for w in widths])
    left.minorticks_off()
    left.set_xlabel("model width d_model")
    right.set_xlabel("state size (floats per sequence; attention: its KV cache)")
    CANVAS.auto_log(right, states, "x")
    if states:  # decades only: 1-2-5 labels collide over four decades at this width
        lo, hi = math.floor(math.log10(min(states))), math.ceil(math.log10(max(states)))
        right.set_xticks([10 ** k for k in range(lo, hi + 1)],
                         [f"{10 ** k:,}" for k in range(lo, hi + 1)])
        right.minorticks_off()
    for ax in (left, right):
        ax.set_ylabel("MQAR accuracy (queried positions)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    left.set_title("accuracy against width (cf. Fig. 2 of the paper)")
    right.set_title("accuracy against state size")
    CANVAS.legend(right)
    return save_figure(fig, root, NAME, stem)


def outcome_of(summaries: dict[str, dict], root: Path, *, quick: bool = False) -> Outcome:
    """The tables, verdict, figure and page of a set of run summaries (quick: the reason
    says that the smoke-test budget checks the pipeline, not the finding)."""
    note = "a smoke test of 20 updates: too short to learn recall, not the finding's test"
    return report_outcome(NAME, TITLE, collect(summaries), judge=judge, table=our_table,
                          paper=PAPER_TABLE, figure=figure, root=root,
                          quick_note=note if quick else None)


@reproduction(NAME, title=TITLE, paper=PAPER,
              budget="about 35 min on 2 cores, 36 runs (quick: under 1 min)", directory=DIRECTORY)
def run(store: RunStore, *, quick: bool = False,
        progress: Callable[[str], None] | None = None) -> Outcome:
    """Run the experiment's sweep (quick: its smoke-test form) and report it."""
    summaries = run_experiment_sweep(store, DIRECTORY, quick=quick, progress=progress)
    return outcome_of(summaries, Path(store.root), quick=quick)
