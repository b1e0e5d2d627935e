"""Rich and lazy learning: how far training moved a run's recurrent weights and its tangent
kernel (Liu et al. 2023, "How connectivity structure shapes rich and lazy learning in neural
circuits"; `seqmem analyze RUN_ID --what richness`).

For every curriculum stage (checkpoint N<k>) and for the run's final state (checkpoint
"last"), against the initial model W0 (checkpoint "init", which every run saves before its
first update; a run trained before that checkpoint existed is rebuilt from its config and
seed, which draws the same initial weights, and `w0_source` says which):

- `weight_change`: ||W - W0||_F / ||W0||_F of the recurrent weights of the last block (the
  matrix as used: `leaky_rnn`'s W with its diagonal zeroed if `zero_diagonal`; W_hh, all gate
  blocks, for `elman`, `gru`, `lstm`): small in the lazy regime, large in the rich one;
- `effective_rank` of W and `effective_rank_delta` of W - W0: Roy & Vetterli's (2007)
  entropy effective rank exp(H(p)), p_i = sigma_i / sum_j sigma_j over the singular values
  (1 for a rank-1 matrix, n for n equal singular values); `participation_ratio` of the
  singular values, (sum sigma_i^2)^2 / sum sigma_i^4, is given beside it;
- `kernel_alignment`: the alignment <K0, K>_F / (||K0||_F ||K||_F) of the empirical neural
  tangent kernel K (over all trainable parameters, or with `ntk_params="recurrent"` the
  recurrent weights only) of the model with the kernel K0 of the initial
  model, on one fixed probe batch of the run's task at the stage's N (`ntk_examples`
  sequences): K[(i, a), (j, b)] = <d f_a(x_i) / d theta, d f_b(x_j) / d theta>, f(x_i) the
  logits of the head reading out N at the example's last supervised step (a regression
  task: the regression head's output there). 1: the kernel did not move (lazy); lower:
  the kernel moved (rich). The final state is probed at the last stage's N.

Models without recurrent weights (`recurrent_weight()`) get the kernel alignment only.
The report draws the weight change and effective ranks by stage, and the kernel alignment.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import torch
from torch import Tensor

from seqmem.analysis.context import Context, derived_seed
from seqmem.analysis.registry import Entry, analysis, figure, run_styles
from seqmem.build import build_curriculum, build_model, build_task
from seqmem.errors import SeqmemError, check_choice
from seqmem.train.loop import INIT_CHECKPOINT, is_regression

OPTIONS = {"ntk_examples": 16, "ntk_params": "all"}
NTK_PARAMS = ("all", "recurrent")
# a recurrent weight's parameter, plain or under a pruning mask's parametrisation
RECURRENT_PARAM = re.compile(r"\.mixer\.(?:parametrizations\.)?(?:W|weight_hh)(?:\.original)?$")


# ---- measures ---------------------------------------------------------------------------------
def singular_values(W: Tensor) -> Tensor:
    """The singular values of W, in float64."""
    return torch.linalg.svdvals(W.detach().double())


def numerical_singular_values(W: Tensor) -> Tensor:
    """The singular values of W (float64) with those below the numerical-rank tolerance of
    W's dtype (sigma_max * max(m, n) * eps, as torch.linalg.matrix_rank) set to 0: rounding
    noise of a float32 matrix is no direction of it."""
    s = singular_values(W)
    if s.numel() and W.is_floating_point():
        tol = s[0] * max(W.shape[-2:]) * torch.finfo(W.dtype).eps
        s = torch.where(s > tol, s, torch.zeros_like(s))
    return s


def effective_rank(W: Tensor) -> float:
    """Roy & Vetterli's (2007) entropy effective rank exp(-sum_i p_i log p_i), with p_i =
    sigma_i / sum_j sigma_j over the singular values of W above the numerical-rank tolerance
    (`numerical_singular_values`; 0 log 0 = 0); 0 for W = 0."""
    s = numerical_singular_values(W)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def participation_ratio(W: Tensor) -> float:
    """(sum sigma_i^2)^2 / sum sigma_i^4 over the singular values of W (as in
    `effective_rank`); 0 for W = 0."""
    s2 = numerical_singular_values(W) ** 2
    denom = (s2 ** 2).sum()
    return float(s2.sum() ** 2 / denom) if denom > 0 else 0.0


def relative_change(W: Tensor, W0: Tensor) -> float:
    """||W - W0||_F / ||W0||_F."""
    W, W0 = W.detach().double(), W0.detach().double()
    if W.shape != W0.shape:
        raise SeqmemError(f"weights of shape {tuple(W.shape)} cannot be compared with initial "
                          f"weights of shape {tuple(W0.shape)}")
    n0 = torch.linalg.norm(W0)
    if n0 == 0:
        raise SeqmemError("the initial weights are all zero: their relative change is undefined")
    return float(torch.linalg.norm(W - W0) / n0)


def kernel_alignment(K0: Tensor, K: Tensor) -> float:
    """<K0, K>_F / (||K0||_F ||K||_F), the cosine of two kernels as matrices (Cristianini et
    al. 2001's alignment)."""
    K0, K = K0.detach().double(), K.detach().double()
    if K0.shape != K.shape:
        raise SeqmemError(f"kernels of shapes {tuple(K0.shape)} and {tuple(K.shape)} cannot be "
                          f"aligned: they must be on the same probe")
    denom = torch.linalg.norm(K0) * torch.linalg.norm(K)
    if denom == 0:
        raise SeqmemError("a kernel is all zero: its alignment is undefined")
    return float((K0 * K).sum() / denom)


def tangent_kernel(outputs: Tensor, params: list[Tensor]) -> Tensor:
    """The empirical tangent kernel J J^T (float64) of `outputs` (any shape, flattened to m
    rows, row-major) with respect to `params`: J (m, P) has one row per output, the gradient
    of that output (one backward pass each through the graph that made `outputs`)."""
    flat = outputs.reshape(-1)
    rows = []
    for i in range(flat.numel()):
        grads = torch.autograd.grad(flat[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double()
                               for g, p in zip(grads, params, strict=True)]))
    J = torch.stack(rows)  # (m, P)
    return J @ J.T  # (m, m)


def probe_outputs(model, batch, head: int | None, *, seed: int) -> Tensor:
    """f(x_i) of `tangent_kernel` for each example of `batch`: the logits of classification
    head `head` (None: the regression head's output) at the example's last supervised step,
    (b, o); a random initial state draws from a generator seeded by `seed`."""
    b = batch.mask.shape[0]
    g = torch.Generator().manual_seed(seed)
    h, _ = model.features(batch.inputs, model.init_state(b, generator=g))  # (b, t, d)
    if not batch.mask.any(dim=1).all():
        raise SeqmemError("a probe example has no supervised step to read out")
    steps = torch.arange(batch.mask.shape[1], device=batch.mask.device)  # (t,)
    last = torch.where(batch.mask, steps, -1).amax(dim=1)  # (b,)
    h_last = h[torch.arange(b, device=h.device), last]  # (b, d)
    return model.predict(h_last) if head is None else model.heads[head](h_last)


def kernel_params(model, which: str = "all") -> list[Tensor]:
    """The parameters a tangent kernel differentiates: "all" the trainable ones, or
    "recurrent" the recurrent weights of every block (W, W_hh)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if check_choice("ntk_params", which, NTK_PARAMS) == "all":
        return [p for _, p in named]
    params = [p for n, p in named if RECURRENT_PARAM.search(n)]
    if not params:
        raise SeqmemError("ntk_params 'recurrent': the model has no trainable recurrent weight "
                          "(W or weight_hh); accepted here: all")
    return params


def model_kernel(model, batch, head: int | None, *, seed: int, params: str = "all") -> Tensor:
    """The tangent kernel of `model`'s probe outputs on `batch` over its parameters
    `params` (`kernel_params`)."""
    params = kernel_params(model, params)
    with torch.enable_grad():
        return tangent_kernel(probe_outputs(model, batch, head, seed=seed), params)


def recurrent_weight(model) -> Tensor | None:
    """The recurrent weights of the model's last block as used (`Mixer.recurrent_weight()`),
    or None if its mixer has none."""
    fn = getattr(model.mixer_modules()[-1], "recurrent_weight", None)
    return None if fn is None else fn().detach()


# ---- the analysis -----------------------------------------------------------------------------
def _headline(w: dict) -> dict:
    r = w.get("richness") or {}
    final = r.get("last") or (r.get("stages") or [{}])[-1]
    out = {}
    for key in ("weight_change", "kernel_alignment", "effective_rank"):
        if final.get(key) is not None:
            out[f"richness_{key}"] = final[key]
    return out


def _initial_model(ctx: Context):
    model = ctx.load(build_model(ctx.cfg, build_curriculum(ctx.cfg)))
    if INIT_CHECKPOINT in ctx.run.checkpoints():
        model.load_state_dict(ctx.run.load_checkpoint(INIT_CHECKPOINT)["model"])
        return model.eval(), "checkpoint init"
    return model.eval(), "rebuilt from the config's seed (the run has no checkpoint init)"


def _final_model(ctx: Context):
    model = ctx.load(build_model(ctx.cfg, build_curriculum(ctx.cfg)))
    model.load_state_dict(ctx.run.load_checkpoint("last")["model"])
    return model.eval()


def _check_examples(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SeqmemError(f"ntk_examples must be an integer >= 1, got {n!r}")
    return n


@analysis("richness", needs="all_stages", writes=("richness",),
          headline={"richness_weight_change": "richness: ||W - W0|| / ||W0|| (final)",
                    "richness_kernel_alignment": "richness: tangent kernel alignment with "
                                                 "init (final)",
                    "richness_effective_rank": "richness: effective rank of W (final)"},
          headline_of=_headline, options=OPTIONS, default=False)
def richness(ctx: Context) -> dict:
    """Relative weight change, effective ranks and tangent-kernel alignment with the initial
    model at every stage and at the end of training (see the module docstring)."""
    n_ex = _check_examples(ctx.options["ntk_examples"])
    which = check_choice("ntk_params", ctx.options["ntk_params"], NTK_PARAMS)
    cfg = ctx.cfg
    init, source = _initial_model(ctx)
    W0 = recurrent_weight(init)
    regression = is_regression(build_task(cfg, build_curriculum(cfg)))
    probes: dict[int, tuple] = {}

    def probe(N: int):
        if N not in probes:
            cur = build_curriculum(cfg)
            if cur.kind != "none":
                cur.N = N
            task = build_task(cfg, cur)
            g = torch.Generator().manual_seed(derived_seed(ctx.seed, "richness", "probe", N))
            batch = task.sample(n_ex, generator=g)
            p = next(init.parameters())
            batch = batch.to(p.device)
            if batch.inputs.is_floating_point() and batch.inputs.dtype != p.dtype:
                batch = dataclasses.replace(batch, inputs=batch.inputs.to(p.dtype))
            head = None if regression else ctx.head(N)
            seed = derived_seed(ctx.seed, "richness", "state", N)
            probes[N] = (batch, head, seed, model_kernel(init, batch, head, seed=seed,
                                                         params=which))
        return probes[N]

    def row(model, N: int) -> dict:
        batch, head, seed, K0 = probe(N)
        K = model_kernel(model, batch, head, seed=seed, params=which)
        out = {"kernel_alignment": kernel_alignment(K0, K)}
        W = recurrent_weight(model)
        if W0 is not None and W is not None:
            out.update(weight_change=relative_change(W, W0), effective_rank=effective_rank(W),
                       participation_ratio=participation_ratio(W),
                       effective_rank_delta=effective_rank(W - W0),
                       participation_ratio_delta=participation_ratio(W - W0))
        return out

    stages = []
    for N in ctx.Ns:
        ctx.say(f"richness N={N}")
        stages.append({"N": N, **row(ctx.model(N), N)})
    ctx.say("richness: final state")
    result = {"w0_source": source, "ntk_examples": n_ex, "ntk_params": which, "stages": stages,
              "last": {"N": ctx.Ns[-1], **row(_final_model(ctx), ctx.Ns[-1])}}
    if W0 is not None:
        result["init"] = {"effective_rank": effective_rank(W0),
                          "participation_ratio": participation_ratio(W0),
                          "norm": float(torch.linalg.norm(W0.double())),
                          "spectral_norm": float(singular_values(W0)[0])}
    else:
        result["no_recurrent_weight"] = (f"the last block's mixer "
                                         f"({cfg.model.mixer.kind}) has no recurrent_weight(): "
                                         f"kernel alignment only")
    return {"richness": result}


# ---- figures ----------------------------------------------------------------------------------
def _rows(e: Entry) -> tuple[list[dict], dict]:
    r = e.analysis.get("richness") or {}
    return list(r.get("stages") or []), dict(r.get("last") or {})


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


@figure("richness_weights", analysis="richness")
def richness_weights_figure(entries: list[Entry], canvas):
    """Relative change of the recurrent weights and the effective rank of W and of W - W0,
    by stage, per run."""
    drawn = [(i, e, *_rows(e)) for i, e in enumerate(entries)]
    drawn = [d for d in drawn if any("weight_change" in s for s in d[2])]
    if not drawn:
        return None
    styles = run_styles(entries, canvas)
    fig, axes = canvas.subplots(1, 2, figsize=(10, 3.6))
    rows = []
    for i, e, stages, last in drawn:
        label, c = styles[i]
        st = [s for s in stages if "weight_change" in s]
        n = np.array([s["N"] for s in st], dtype=float)
        axes[0].plot(n, [s["weight_change"] for s in st], "o-", color=c, ms=4, label=label)
        axes[1].plot(n, [s["effective_rank"] for s in st], "o-", color=c, ms=4,
                     label=f"{label}: W")
        axes[1].plot(n, [s["effective_rank_delta"] for s in st], "s--", color=c, ms=4,
                     mfc="none", label=f"{label}: W - W0")
        init_rank = (e.analysis["richness"].get("init") or {}).get("effective_rank")
        for s in [*st, {**last, "N": "last"}]:
            if "weight_change" in s:
                rows.append([label, s["N"], _fmt(s["weight_change"]),
                             _fmt(s["effective_rank"]), _fmt(s["effective_rank_delta"]),
                             _fmt(init_rank)])
    for ax in axes:
        ax.locator_params(axis="x", integer=True)
        ax.set_xlabel("N solved")
    axes[0].set(ylabel="||W - W0|| / ||W0||", title="Recurrent weight change from init")
    axes[1].set(ylabel="effective rank (Roy & Vetterli)",
                title="Effective rank of W (solid) and of W - W0 (dashed)")
    for ax in axes:
        ax.title.set_fontsize(9)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    caption = ("Rich versus lazy learning (Liu et al. 2023): left, the Frobenius norm of the "
               "change of the last block's recurrent weights relative to their initial norm, "
               "at each curriculum stage; right, the entropy effective rank (Roy & Vetterli "
               "2007) of the weights (solid) and of their change (dashed). A large, low-rank "
               "change is the rich regime; a small one the lazy regime. The table adds the "
               "final state (last) and the effective rank at init.")
    return fig, ["run", "N", "weight change", "erank W", "erank W - W0", "erank W0"], rows, \
        caption


@figure("richness_kernel", analysis="richness")
def richness_kernel_figure(entries: list[Entry], canvas):
    """Alignment of the tangent kernel with the initial model's, by stage, per run."""
    drawn = [(i, e, *_rows(e)) for i, e in enumerate(entries)]
    drawn = [d for d in drawn if d[2]]
    if not drawn:
        return None
    styles = run_styles(entries, canvas)
    fig, ax = canvas.subplots(figsize=(5.6, 3.4))
    rows = []
    for i, _e, stages, last in drawn:
        label, c = styles[i]
        n = np.array([s["N"] for s in stages], dtype=float)
        ax.plot(n, [s["kernel_alignment"] for s in stages], "o-", color=c, ms=4, label=label)
        rows += [[label, s["N"], _fmt(s["kernel_alignment"])]
                 for s in [*stages, {**last, "N": "last"}] if "kernel_alignment" in s]
    ax.axhline(1.0, color="k", lw=0.5)
    ax.locator_params(axis="x", integer=True)
    ax.set(xlabel="N solved", ylabel="alignment with K0",
           title="Tangent kernel alignment with init")
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    r0 = drawn[0][1].analysis["richness"]
    n_ex, which = r0.get("ntk_examples", "?"), r0.get("ntk_params", "all")
    over = "all trainable parameters" if which == "all" else "the recurrent weights"
    caption = (f"Kernel alignment <K0, K>_F / (||K0||_F ||K||_F) of the empirical tangent "
               f"kernel K (over {over}) of each stage's model with the kernel K0 of the "
               f"initial model, on one "
               f"probe batch of {n_ex} sequences of the stage's N (the logits of the head that "
               f"reads out N, at the last supervised step). 1: the kernel did not move (lazy "
               f"learning); lower: it moved (rich learning). The table adds the final state.")
    return fig, ["run", "N", "kernel alignment"], rows, caption
