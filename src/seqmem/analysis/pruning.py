"""Pruning at the last stage: accuracy against sparsity, and which units pruning removes
first, by their tau and tau_net (`seqmem prune RUN_ID`, `seqmem analyze --what pruning`).

For each method and target sparsity s (`prune_sparsities`), from the model of the last
curriculum stage (the pruning itself: `seqmem.train.prune`):

- `magnitude`: the fraction s of every mixer weight of smallest |w| masked, one-shot, or with
  fine-tuning under a gradual schedule (`prune_schedule`: Zhu & Gupta's cubic sparsity or
  Narang et al.'s threshold ramp, over the first half of the fine-tuning updates);
- `structured`: the round(s n) units (RNNs) or heads (linear attention) of the last block
  with the smallest group norm removed with their whole dependency group, one-shot.

Accuracy is the analyses' measure (the streaming task of the run's N for n_parity / n_dms,
`Context.stream_accuracy`, the same streams at every call; other tasks: the training loop's
evaluation on the held-out split), and relative to the intact model's. After the one-shot
accuracy, `prune_finetune_epochs` epochs of the run's batches at the last stage train the
pruned model with its masks held; `prune_retrain` trains the pruned mask from a fresh
initialisation instead (Liu et al. 2019, "Rethinking the Value of Network Pruning":
Scratch-E, as many epochs as the run took to reach the stage unless
`prune_retrain_epochs`). With `prune_save`, each pruned (and fine-tuned) model is saved as
checkpoint `prune-<method>-s<percent>` (masked weights and their masks). A model whose last
block has no dependency groups (another mixer, residual blocks) skips structured pruning,
saying why under "skipped".

The memory question: the removal order of structured pruning, each unit's tau (and tau_net,
for scalar-input models), the Spearman correlation of removal rank with tau and tau_net
(`spearman_tau` < 0: long-tau units go first), and for magnitude pruning the fraction of
each unit's own weights pruned (`unit_pruned_fraction`) and its Spearman correlation with
tau (`spearman_pruned_tau` > 0: long-tau units lose more of their weights).
"""

from __future__ import annotations

import numpy as np
import torch

from seqmem.analysis.context import Context, derived_seed
from seqmem.analysis.registry import Entry, analysis, figure, run_styles
from seqmem.analysis.timescales import network_timescales
from seqmem.build import build_curriculum, build_model, build_optimizer, build_task
from seqmem.errors import SeqmemError, check_choice
from seqmem.train import prune as P
from seqmem.train.loop import evaluate, is_regression

STREAM_TASKS = ("n_parity", "n_dms")  # tasks with a streaming variant (probes)
OPTIONS = {"prune_methods": ("magnitude", "structured"),
           "prune_sparsities": (0.1, 0.25, 0.5, 0.75, 0.9),
           "prune_schedule": "oneshot", "prune_finetune_epochs": 0, "prune_retrain": False,
           "prune_retrain_epochs": None, "prune_save": False, "prune_tau_net": True,
           "prune_tau_net_steps": 2000}
GRADUAL_PRUNING_STEPS = 10  # pruning steps of a gradual schedule


def _headline(w: dict) -> dict:
    p = w.get("pruning") or {}
    out = {}
    for key in ("spearman_tau", "spearman_tau_net"):
        v = (p.get("order") or {}).get(key)
        if v is not None:
            out[f"prune_{key}"] = v
    return out


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of x, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of a and b over the entries where both are finite (the
    Pearson correlation of their average ranks); None with fewer than 3 or a constant one."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def check_options(opts) -> tuple[list[str], list[float], str, int, bool]:
    """(methods, sparsities, schedule, fine-tuning epochs, retrain) of the pruning options,
    or a one-line SeqmemError naming the option that is wrong and what it accepts."""
    methods = list(opts["prune_methods"])
    if isinstance(opts["prune_methods"], str):
        methods = [m.strip() for m in opts["prune_methods"].split(",") if m.strip()]
    for m in methods:
        check_choice("pruning method", m, P.METHODS)
    try:
        sps = sorted(float(s) for s in opts["prune_sparsities"])
    except (TypeError, ValueError):
        raise SeqmemError(f"prune_sparsities must be numbers in (0, 1), got "
                          f"{opts['prune_sparsities']!r}") from None
    if not sps or any(not 0 < s < 1 for s in sps):
        raise SeqmemError(f"prune_sparsities must be numbers in (0, 1), got {sps}")
    schedule = check_choice("pruning schedule", opts["prune_schedule"], P.SCHEDULES)
    epochs = opts["prune_finetune_epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise SeqmemError(f"prune_finetune_epochs must be an integer >= 0, got {epochs!r}")
    if schedule != "oneshot" and epochs == 0:
        raise SeqmemError(f"the gradual schedule {schedule!r} prunes while fine-tuning: give "
                          f"prune_finetune_epochs >= 1 (or schedule oneshot)")
    return methods, sps, schedule, epochs, bool(opts["prune_retrain"])


@analysis("pruning", needs="last_stage", writes=("pruning",),
          headline={"prune_spearman_tau": "pruning: Spearman(removal order, tau)",
                    "prune_spearman_tau_net": "pruning: Spearman(removal order, tau_net)"},
          headline_of=_headline, options=OPTIONS, default=False)
def pruning(ctx: Context) -> dict:
    """Accuracy against sparsity under magnitude and structured pruning, with fine-tuning
    and the retrain-from-scratch baseline, and the tau of the units removed first (see the
    module docstring)."""
    opts = ctx.options
    methods, sps, schedule, ft_epochs, retrain = check_options(opts)
    cfg, t = ctx.cfg, ctx.cfg.train
    dense = ctx.model()
    block = len(dense.blocks) - 1
    stream = ctx.task in STREAM_TASKS
    cur = build_curriculum(cfg)
    if cur.kind != "none":
        cur.N = ctx.N
    task = build_task(cfg, cur)
    if is_regression(task):
        raise SeqmemError(f"pruning reports accuracy against sparsity; task {ctx.task!r} is a "
                          f"regression task (MSE) and has no accuracy")
    eval_task = build_task(cfg, cur, split="test")
    heads = cur.active_heads(len(task.heads))

    def accuracy(model) -> float:
        model.eval()
        if stream:
            return ctx.stream_accuracy(model)
        g = torch.Generator().manual_seed(derived_seed(ctx.seed, "pruning", "eval"))
        accs, _ = evaluate(cfg, model, eval_task, heads, g, d_out=len(heads))
        return float(np.mean(accs))

    base = ctx.base_accuracy() if stream else accuracy(dense)
    state = ctx.run.load_checkpoint(f"N{ctx.N:03d}")

    def pruned_copy(masks):
        m = ctx.load(build_model(cfg))
        m.load_state_dict(state["model"])
        P.attach_masks(m, masks)
        return m.eval()

    def train(model, epochs, key, pruner=None) -> float:
        g = torch.Generator().manual_seed(derived_seed(ctx.seed, "pruning", *key))
        P.finetune(model, build_optimizer(cfg, model), task, heads,
                   steps=epochs * t.steps_per_epoch, batch_size=t.batch_size, generator=g,
                   clip=t.clip, pruner=pruner)
        return accuracy(model)

    retrain_epochs = opts["prune_retrain_epochs"]
    if retrain_epochs is None:
        retrain_epochs = int(state["train"]["epoch"])

    def scratch(masks, key) -> float:
        fresh_cfg = cfg.model_copy(update={"seed": cfg.seed + 1})  # a fresh initialisation
        m = ctx.load(build_model(fresh_cfg))
        P.attach_masks(m, masks)
        return train(m, retrain_epochs, ("scratch", *key))

    ts = dense.timescales()
    tau = ts.detach().double().cpu().numpy() if ts is not None else None
    tau_net = None
    if opts["prune_tau_net"] and tau is not None and dense.d_input == 1 \
            and not dense.vocab_size:
        ctx.say("pruning: tau_net of the intact units")
        tau_net = network_timescales(dense, generator=ctx.generator,
                                     n_steps=int(opts["prune_tau_net_steps"]))["tau_net"]

    def record(method, s, masks, extra) -> dict:
        tag = f"prune-{method}-s{round(100 * s):03d}"
        ctx.say(f"pruning: {method} at {s:.2f}")
        m = pruned_copy(masks)
        acc0 = accuracy(m)
        row = {"method": method, "target": s, "acc_oneshot": acc0, "rel_oneshot": acc0 / base,
               **extra}
        if ft_epochs:
            pruner = None
            if method == "magnitude" and schedule != "oneshot":
                m = pruned_copy({p: torch.ones_like(v) for p, v in masks.items()})
                n_steps, every = gradual_steps(ft_epochs * t.steps_per_epoch)
                pruner = P.GradualPruner(m, schedule, s, 0, n_steps, every, list(masks))
            acc = train(m, ft_epochs, (method, s), pruner)
            row.update(acc_finetuned=acc, rel_finetuned=acc / base, schedule=(
                schedule if method == "magnitude" else "oneshot"))
        masks = P.masks_of(m)
        row["sparsity"] = P.sparsity({p: masks[p] for p in P.prunable(m) if p in masks})
        row["sparsity_masked"] = P.sparsity(masks)
        if retrain:
            acc = scratch(masks, (method, s))
            row.update(acc_retrained=acc, rel_retrained=acc / base,
                       retrain_epochs=retrain_epochs)
        if method == "magnitude" and tau is not None and P.structure_of(m, block) == "units":
            frac = np.array([_group_pruned(m, block, i) for i in range(len(tau))])
            row["unit_pruned_fraction"] = frac.tolist()
            row["spearman_pruned_tau"] = spearman(frac, tau)
        if opts["prune_save"]:
            ctx.run.save_checkpoint(tag, {"model": P.plain_state_dict(m), "masks": masks,
                                          "prune": {k: v for k, v in row.items()
                                                    if not isinstance(v, list)}})
            row["checkpoint"] = tag
        return row

    points, skipped = [], {}
    order_info = None
    if "structured" in methods:
        try:
            P.group(dense, block, 0)
        except SeqmemError as e:  # a mixer or block without dependency groups
            skipped["structured"] = str(e)
    for method in methods:
        if method in skipped:
            continue
        if method == "magnitude":
            for s in sps:
                points.append(record(method, s, P.magnitude_masks(dense, s), {}))
            continue
        kind = P.structure_of(dense, block)
        order = P.structured_order(dense, block)
        n = len(order)
        order_info = {"block": block, "structure": kind, "units": order,
                      "score": [P.group_score(dense, block, i) for i in order]}
        if kind == "units" and tau is not None:
            rank = np.empty(n)
            rank[order] = np.arange(n)
            order_info["tau"] = [float(tau[i]) for i in order]
            order_info["spearman_tau"] = spearman(rank, tau)
            if tau_net is not None:
                order_info["tau_net"] = [float(tau_net[i]) for i in order]
                order_info["spearman_tau_net"] = spearman(rank, tau_net)
        for s in sps:
            k = min(n, max(1, round(s * n)))
            removed = order[:k]
            extra = {"n_removed": k, "n_total": n, "removed": removed}
            if kind == "units" and tau is not None:
                kept = order[k:]
                extra["tau_removed_mean"] = float(tau[removed].mean())
                extra["tau_kept_mean"] = float(tau[kept].mean()) if kept else None
                if tau_net is not None:
                    extra["tau_net_removed_mean"] = _nanmean(tau_net[removed])
                    extra["tau_net_kept_mean"] = _nanmean(tau_net[kept]) if kept else None
            points.append(record(method, s, P.group_masks(dense, block, removed), extra))
    return {"pruning": {"N": ctx.N, "base_accuracy": base, "measure": (
        "stream" if stream else "eval"), "finetune_epochs": ft_epochs, "schedule": schedule,
        "tau_mean": float(tau.mean()) if tau is not None else None,
        "tau_net_mean": _nanmean(tau_net) if tau_net is not None else None,
        "points": points, "order": order_info, "skipped": skipped}}


def gradual_steps(total: int) -> tuple[int, int]:
    """(n pruning steps, dt) of a gradual schedule over the first half of `total` updates:
    up to GRADUAL_PRUNING_STEPS steps, the last at update n dt <= total / 2 (so the final
    sparsity is reached, and trained at, within the budget)."""
    if total < 2:
        raise SeqmemError(f"a gradual pruning schedule needs at least 2 fine-tuning updates, "
                          f"got {total}; raise prune_finetune_epochs or train.steps_per_epoch")
    n = max(1, min(GRADUAL_PRUNING_STEPS, total // 2))
    return n, max(1, (total // 2) // n)


def _nanmean(x) -> float | None:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def _group_pruned(model, block: int, i: int) -> float:
    """The fraction of unit i's own weights in its block (its group's slices in the mixer)
    that its masks hold at zero."""
    masks = P.masks_of(model)
    zero = total = 0
    for s in P.group(model, block, i):
        if s.mask and s.param in masks and ".mixer." in s.param:
            m = masks[s.param]
            sel = m.index_select(s.dim, torch.tensor(s.index, device=m.device))
            zero += int((sel == 0).sum())
            total += sel.numel()
    return zero / total if total else 0.0


@figure("pruning", analysis="pruning")
def pruning_figure(entries: list[Entry], canvas):
    """Accuracy (relative to the intact model) against sparsity per pruning method: one-shot,
    fine-tuned with the masks held, retrained from scratch; and the mean tau of the units
    structured pruning removed against the fraction removed (kept units for reference)."""
    entries = [e for e in entries if (e.analysis.get("pruning") or {}).get("points")]
    if not entries:
        return None
    has_tau = any(q["method"] == "structured" and "tau_removed_mean" in q
                  for e in entries for q in e.analysis["pruning"]["points"])
    fig, axes = canvas.subplots(1, 2 if has_tau else 1,
                                figsize=(11.6 if has_tau else 6.4, 3.6), squeeze=False)
    ax, ax2 = axes[0][0], axes[0][-1] if has_tau else None
    rows = []
    for e, (label, color) in zip(entries, run_styles(entries, canvas), strict=True):
        p = e.analysis["pruning"]
        for method, marker in (("magnitude", "o"), ("structured", "s")):
            pts = [q for q in p["points"] if q["method"] == method]
            if not pts:
                continue
            x = [q["sparsity"] if method == "magnitude" else q["n_removed"] / q["n_total"]
                 for q in pts]
            for key, ls, what in (("rel_oneshot", "--", "one-shot"),
                                  ("rel_finetuned", "-", "fine-tuned"),
                                  ("rel_retrained", ":", "from scratch")):
                if all(key in q for q in pts):
                    ax.plot(x, [q[key] for q in pts], ls, marker=marker, color=color, ms=4,
                            label=f"{label}: {method}, {what}")
            if has_tau and method == "structured" and all("tau_removed_mean" in q for q in pts):
                ax2.plot(x, [q["tau_removed_mean"] for q in pts], "s-", color=color, ms=4,
                         label=f"{label}: removed units")
                kept = [(xx, q["tau_kept_mean"]) for xx, q in zip(x, pts, strict=True)
                        if q["tau_kept_mean"] is not None]
                if kept:
                    ax2.plot(*zip(*kept, strict=True), "o--", color=color, ms=3, alpha=0.6,
                             label=f"{label}: kept units")
            for xx, q in zip(x, pts, strict=True):
                rows.append([label, method, f"{xx:.3f}", f"{q['acc_oneshot']:.3f}",
                             f"{q['acc_finetuned']:.3f}" if "acc_finetuned" in q else "",
                             f"{q['acc_retrained']:.3f}" if "acc_retrained" in q else "",
                             f"{q['tau_removed_mean']:.3f}" if "tau_removed_mean" in q else ""])
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set(xlabel="sparsity (weights; structured: units or heads removed)",
           ylabel="accuracy / intact accuracy", title="Accuracy against sparsity")
    ax.title.set_fontsize(9)
    canvas.legend(ax, fontsize=7)
    if ax2 is not None:
        ax2.set(xlabel="fraction of units removed (smallest group norm first)",
                ylabel="mean tau", title="tau of the units structured pruning removes")
        ax2.title.set_fontsize(9)
        canvas.legend(ax2, fontsize=7)
    return fig, ["run", "method", "sparsity", "acc one-shot", "acc fine-tuned",
                 "acc from scratch", "tau removed (mean)"], rows
