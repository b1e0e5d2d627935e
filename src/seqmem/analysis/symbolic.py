"""The symbolic code of a piecewise-linear RNN (Brenner, Hemmer, Monfared & Durstewitz 2024,
"Almost-Linear RNNs Yield Highly Interpretable Symbolic Codes in Dynamical Systems
Reconstruction", NeurIPS): the linear subregion the latent state is in at each step, as an
integer symbol, and the graph of transitions between subregions.

For an al_rnn the subregion is the sign pattern of its P ReLU units (bit i: unit M - P + i
positive); for a plrnn that of its L hidden ReLU units, W2 z + h2 (`Mixer.subregion`). On the
dynamics task the model reads the true warm-up (seq_len steps), then runs free (its
predictions fed back, as `seqmem.analysis.dynamics.free_run`) for `symbolic_steps` steps
after a quarter as many dropped as transients; on other tasks it is driven by a sampled
sequence. From the symbol sequence s_1..s_n:

- the subregions visited (`n_visited` of 2^P possible);
- the transition graph: counts of (s_t, s_{t+1}) pairs, self-transitions included, as an edge
  list [from, to, count];
- its simple cycles (`simple_cycles`: each closed path that repeats no node, self-loops
  included, listed once from its smallest symbol), up to `symbolic_max_cycle_len` nodes and
  `symbolic_max_cycles` cycles (`cycles_truncated` says whether the limit cut the list).
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import torch
from torch import Tensor

from seqmem.analysis.context import Context
from seqmem.analysis.registry import Entry, analysis, figure, run_styles
from seqmem.build import build_curriculum, build_model, build_task
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel

OPTIONS = {"symbolic_steps": 2000, "symbolic_max_cycle_len": 8, "symbolic_max_cycles": 200}


def transition_counts(symbols: list[int] | Tensor) -> dict[tuple[int, int], int]:
    """{(a, b): how often symbol b follows symbol a} in a sequence of symbols."""
    s = [int(v) for v in symbols]
    return dict(Counter(itertools.pairwise(s)))


def simple_cycles(edges, *, max_len: int | None = None, max_cycles: int | None = None
                  ) -> tuple[list[list[int]], bool]:
    """The simple cycles of a directed graph given by its edges (pairs (a, b)): every closed
    path a_1 -> ... -> a_k -> a_1 with no node repeated, self-loops (k = 1) included, each
    listed once, starting from its smallest node, in lexicographic order.

    A depth-first search from each node s through nodes larger than s only (so a cycle is
    found from its smallest node, once). `max_len` bounds k and `max_cycles` the number
    listed; returns (cycles, truncated), truncated True if max_cycles cut the enumeration.
    """
    succ: dict[int, list[int]] = {}
    for a, b in edges:
        succ.setdefault(int(a), []).append(int(b))
        succ.setdefault(int(b), [])
    for v in succ:
        succ[v] = sorted(set(succ[v]))
    cycles: list[list[int]] = []
    for s in sorted(succ):
        path, on_path = [s], {s}
        stack = [iter(succ[s])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                on_path.discard(path.pop())
                continue
            if nxt == s:
                cycles.append(list(path))
                if max_cycles is not None and len(cycles) >= max_cycles:
                    return sorted(cycles), True
            elif nxt > s and nxt not in on_path and (max_len is None or len(path) < max_len):
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(succ[nxt]))
    return sorted(cycles), False


def piecewise_mixer(model: SequenceModel):
    """(block index, mixer) of the last block whose mixer has linear subregions
    (`subregion`: al_rnn, plrnn), or None."""
    for i in reversed(range(len(model.blocks))):
        mixer = model.blocks[i].mixer
        if callable(getattr(mixer, "subregion", None)):
            return i, mixer
    return None


@torch.no_grad()
def latent_trajectory(model: SequenceModel, block: int, warmup: Tensor, n_steps: int, *,
                      state=None, generator: torch.Generator | None = None) -> Tensor:
    """The states (b, n_steps, M) of block `block` while the model runs free: it reads the
    warm-up x_0..x_{w-1} (b, w, d), then feeds its predictions back (as `free_run`)."""
    b = warmup.shape[0]
    state = model.init_state(b, generator=generator) if state is None else state
    for t in range(warmup.shape[1]):
        h, state = model.step(warmup[:, t], state)
    out = []
    for _ in range(n_steps):
        h, state = model.step(model.predict(h), state)
        out.append(state[block])
    return torch.stack(out, dim=1)


@torch.no_grad()
def driven_trajectory(model: SequenceModel, block: int, inputs: Tensor, *, state=None,
                      generator: torch.Generator | None = None) -> Tensor:
    """The states (b, t, M) of block `block` while the model reads `inputs` (b, t, ...)."""
    state = model.init_state(inputs.shape[0], generator=generator) if state is None else state
    out = []
    for t in range(inputs.shape[1]):
        _, state = model.step(inputs[:, t], state)
        out.append(state[block])
    return torch.stack(out, dim=1)


def symbolic_code(symbols: list[int], *, n_bits: int, max_len: int, max_cycles: int) -> dict:
    """The symbolic summary of a symbol sequence (see the module docstring)."""
    counts = transition_counts(symbols)
    cycles, truncated = simple_cycles(counts, max_len=max_len, max_cycles=max_cycles)
    freq = Counter(symbols)
    return {"n_relu": n_bits, "n_possible": 2 ** n_bits, "steps": len(symbols),
            "symbols": symbols, "n_visited": len(freq),
            "visited": sorted(freq, key=lambda s: (-freq[s], s)),
            "occupancy": [freq[s] / len(symbols) for s in sorted(freq, key=lambda s: (-freq[s],
                                                                                        s))],
            "transitions": [[a, b, c] for (a, b), c in sorted(counts.items())],
            "cycles": cycles, "n_cycles": len(cycles), "cycles_truncated": truncated}


def final_model(ctx: Context) -> SequenceModel:
    """The run's model from its checkpoint "last", in eval mode."""
    model = ctx.load(build_model(ctx.cfg, build_curriculum(ctx.cfg)))
    model.load_state_dict(ctx.run.load_checkpoint("last")["model"])
    return model.eval()


def _headline(written: dict) -> dict:
    s = written.get("symbolic") or {}
    return {"n_subregions": s["n_visited"]} if "n_visited" in s else {}


@analysis("symbolic", needs="run", writes=("symbolic",),
          headline={"n_subregions": "subregions visited"}, headline_of=_headline,
          options=OPTIONS, default=False)
def symbolic(ctx: Context) -> dict:
    """The subregion symbol of every step of a free run (dynamics) or a driven sequence,
    the transition graph between subregions and its cycles; {} for a model without a
    piecewise-linear mixer (al_rnn, plrnn)."""
    model = final_model(ctx)
    found = piecewise_mixer(model)
    if found is None:
        ctx.say("symbolic: no piecewise-linear mixer (al_rnn, plrnn); skipped")
        return {}
    block, mixer = found
    n = int(ctx.options["symbolic_steps"])
    if n < 2:
        raise SeqmemError(f"symbolic_steps must be an integer >= 2, got {n}")
    task = build_task(ctx.cfg, build_curriculum(ctx.cfg), split="test")
    p = next(model.parameters())
    if hasattr(task, "trajectory") and model.regressor is not None \
            and model.d_output == model.d_input:
        w, drop = int(task.seq_len), n // 4
        x = task.trajectory(w, 1, generator=ctx.generator).to(p.device, p.dtype)
        Z = latent_trajectory(model, block, x, n + drop, generator=ctx.generator)[:, drop:]
        source = f"free run after a {w}-step warm-up, {drop} transient steps dropped"
    else:
        batch = task.sample(1, generator=ctx.generator)
        x = batch.inputs[:, :n]
        Z = driven_trajectory(model, block, x.to(p.device) if not x.is_floating_point()
                              else x.to(p.device, p.dtype), generator=ctx.generator)
        source = "driven by one sampled sequence"
    symbols = [int(s) for s in mixer.subregion(Z[0])]
    n_bits = int(getattr(mixer, "n_relu", getattr(mixer, "d_hidden", 0)))
    out = symbolic_code(symbols, n_bits=n_bits, max_len=int(ctx.options["symbolic_max_cycle_len"]),
                        max_cycles=int(ctx.options["symbolic_max_cycles"]))
    return {"symbolic": {"mixer": ctx.cfg.model.mixer.kind, "block": block, "source": source,
                         **out}}


@figure("symbolic", analysis="symbolic")
def symbolic_figure(entries: list[Entry], canvas):
    """Per run: the symbol sequence over time (subregions ranked by occupancy) and the
    transition counts between subregions as a matrix (log scale)."""
    fig, axes = canvas.subplots(len(entries), 2, figsize=(9.5, 3.0 * len(entries)),
                                squeeze=False)
    rows = []
    for (ax_t, ax_m), e, (label, color) in zip(axes, entries, run_styles(entries, canvas),
                                                strict=True):
        s = e.analysis["symbolic"]
        rank = {sym: i for i, sym in enumerate(s["visited"])}
        seq = np.array([rank[v] for v in s["symbols"]])
        shown = min(len(seq), 500)
        ax_t.step(np.arange(shown), seq[:shown], where="post", color=color, lw=0.8)
        ax_t.set(xlabel="step of the free run", ylabel="subregion (rank by occupancy)")
        ax_t.set_title(f"{label} ({s['mixer']}): symbolic sequence, first {shown} steps",
                       fontsize=9)
        k = len(s["visited"])
        T = np.zeros((k, k))
        for a, b, c in s["transitions"]:
            T[rank[a], rank[b]] = c
        im = ax_m.imshow(np.log10(1 + T), cmap="viridis", origin="lower")
        ax_m.set(xlabel="to subregion (rank)", ylabel="from subregion (rank)")
        canvas.integer_axis(ax_t, "y")  # subregion ranks are integers
        canvas.integer_axis(ax_m, "x")
        canvas.integer_axis(ax_m, "y")
        if k == 1:  # one subregion: a single tick at rank 0
            ax_t.set_yticks([0])
            ax_m.set_xticks([0])
            ax_m.set_yticks([0])
        ax_m.set_title(f"{label}: transitions between the {k} subregion{'s' * (k != 1)} "
                       f"visited", fontsize=9)
        fig.colorbar(im, ax=ax_m, fraction=0.046, label="log10(1 + count)")
        rows.append([label, s["mixer"], s["n_visited"], s["n_possible"], s["n_cycles"]
                     if not s["cycles_truncated"] else f">= {s['n_cycles']}",
                     f"{s['occupancy'][0]:.3f}"])
    caption = ("Symbolic code of each run's latent dynamics (Brenner et al. 2024): left, the "
               "linear subregion (sign pattern of the ReLU units) at each step of a free run, "
               "subregions ranked by how often they are visited; right, the counts of "
               "transitions between subregions (diagonal: staying). The table gives the "
               "subregions visited out of those possible and the simple cycles of the "
               "transition graph.")
    return fig, ["run", "mixer", "subregions visited", "possible", "cycles",
                 "share of the most visited"], rows, caption
