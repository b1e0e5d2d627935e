"""Pruning: masks held in the parametrisation, magnitude and structured pruning, schedules,
and fine-tuning with the masks held.

- **Masks.** `attach_masks(model, {path: mask})` registers W -> W * mask on each parameter
  (`torch.nn.utils.parametrize`), the mask a buffer of the parametrisation. Every form of
  every mixer (chunk, parallel, recurrent, fused, newton and the step) reads its weights as
  module attributes, so it reads them masked: a masked entry is exactly zero in every form,
  its gradient is zero, and whatever an optimizer does to the stored original (momentum,
  weight decay) never reaches the weight the model uses. The original is zeroed too.
  A checkpoint stores `plain_state_dict(model)` (the usual names, masked values: a pruned
  checkpoint loads into an unpruned model of the run) and `masks_of(model)` beside it.
- **Magnitude pruning** (unstructured, per tensor): the k = round(s n) entries of smallest
  |w| of each prunable tensor (the 2-D weights of the mixers, as the computation uses them:
  `used_weight`) are masked, ties by position.
- **Gradual schedules.** Zhu & Gupta 2017 ("To prune, or not to prune"), the cubic sparsity
  s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 at t = t0, t0 + dt, ..., t0 + n dt;
  Narang, Elsen, Diamos & Sengupta 2017 ("Exploring Sparsity in Recurrent Neural Networks",
  ICLR 2017), the threshold ramp of their Algorithm 1 and Table 1: every `freq` steps in
  (start, end) the weights with |w| < eps are masked, eps growing with slope theta until
  `ramp` and phi = 1.5 theta after, theta = 2 q freq / (2 (ramp - start) + 3 (end - ramp)),
  q the 90th percentile of |w| of the tensor when pruning starts.
- **Structured pruning** of whole units (RNN hidden units) or heads (linear-attention heads)
  by dependency groups, as in "Structurally Prune Anything" (Wang et al. 2024): `UNIT_GROUPS`
  and `HEAD_GROUPS` describe, per mixer family, every slice of every parameter that belongs
  to unit i / head j (removing unit i of a leaky RNN removes row i and column i of W, row i
  of U, b_i, tau_i, and column i of whatever reads the block: the next block's input
  weights or the read-out heads). A group is masked as a whole; entries of parameters where
  zero is not a no-op (tau, decays) are listed with `mask=False`: they are removed when the
  layer is made smaller but left as they are under a mask, where they no longer matter.
  A group's score is the L2 norm of its masked entries; the lowest go first.
- **Fine-tuning** (`finetune`): updates of the training loop's batches with the masks held,
  a pruner (a gradual schedule) called after every update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from seqmem.errors import SeqmemError, check_choice
from seqmem.models import SequenceModel
from seqmem.train.loop import run_batch

METHODS = ("magnitude", "structured")
SCHEDULES = ("oneshot", "zhu_gupta", "narang")
PARAM_TAG = ".parametrizations."


class Mask(nn.Module):
    """The parametrisation W -> W * mask, the mask (same shape, 0 or 1) a buffer."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, W: Tensor) -> Tensor:
        return W * self.mask


# ---- masks on a model ------------------------------------------------------------------
def plain_name(name: str) -> str:
    """A parameter's usual name: "a.parametrizations.W.original" -> "a.W"."""
    if PARAM_TAG in name:
        head, _, tail = name.partition(PARAM_TAG)
        return f"{head}.{tail.split('.')[0]}"
    return name


def _owner(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    mod_path, _, attr = path.rpartition(".")
    try:
        mod = model.get_submodule(mod_path) if mod_path else model
    except AttributeError:
        mod = None
    if mod is None or not isinstance(getattr(mod, attr, None), Tensor):
        names = sorted({plain_name(n) for n, _ in model.named_parameters()})
        raise SeqmemError(f"no parameter {path!r} in the model to mask; its parameters: "
                          f"{', '.join(names)}")
    return mod, attr


def weight(model: nn.Module, path: str) -> Tensor:
    """The parameter `path` as the model uses it (masked, if it has a mask)."""
    mod, attr = _owner(model, path)
    return getattr(mod, attr)


def used_weight(model: nn.Module, path: str) -> Tensor:
    """The parameter `path` as the computation uses it: masked, and the leaky RNN's W with
    its diagonal zeroed where `zero_diagonal` forces it (those entries never act, so
    magnitude pruning counts them as zero and takes them first)."""
    mod, attr = _owner(model, path)
    w = getattr(mod, attr)
    if attr == "W" and getattr(mod, "name", "") == "leaky_rnn" and mod.zero_diagonal:
        w = w * mod.off_diagonal
    return w


def attach_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Hold each parameter `path` of `masks` at W * mask from now on (a parameter masked
    before gets the new mask); the stored original is multiplied by the mask too."""
    for path, mask in masks.items():
        mod, attr = _owner(model, path)
        current = getattr(mod, attr)
        if tuple(mask.shape) != tuple(current.shape):
            raise SeqmemError(f"mask of {path!r} has shape {tuple(mask.shape)}, the parameter "
                              f"{tuple(current.shape)}")
        mask = mask.to(device=current.device, dtype=current.dtype)
        if parametrize.is_parametrized(mod, attr):
            mod.parametrizations[attr][0].mask.copy_(mask)
        else:
            parametrize.register_parametrization(mod, attr, Mask(mask))
        with torch.no_grad():
            mod.parametrizations[attr].original.mul_(mask)


def masks_of(model: nn.Module) -> dict[str, Tensor]:
    """{parameter path: its mask} of every masked parameter of the model."""
    out = {}
    for name, mod in model.named_modules():
        if parametrize.is_parametrized(mod):
            for attr, plist in mod.parametrizations.items():
                for p in plist:
                    if isinstance(p, Mask):
                        out[f"{name}.{attr}" if name else attr] = p.mask.detach().clone()
    return out


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict under the usual names with masked values: what an unmasked
    model of the same architecture loads (the pruned entries are zeros)."""
    out = {}
    for key, value in model.state_dict().items():
        if PARAM_TAG not in key:
            out[key] = value
        elif key.endswith(".original"):
            name = plain_name(key)
            out[name] = weight(model, name).detach().clone()
    return out


def load_masked(model: nn.Module, state: dict) -> nn.Module:
    """Load a checkpoint's {"model": plain state dict, "masks": {...}} into `model` (an
    unmasked model of the run), masks attached; a checkpoint without masks loads plain."""
    model.load_state_dict(state["model"])
    attach_masks(model, state.get("masks") or {})
    return model


def sparsity(masks: dict[str, Tensor]) -> float:
    """The fraction of masked entries over all the entries of `masks`."""
    n = sum(m.numel() for m in masks.values())
    return float(sum((m == 0).sum().item() for m in masks.values()) / n) if n else 0.0


def prunable(model: SequenceModel) -> list[str]:
    """Paths of the weights magnitude pruning acts on: the 2-D parameters of every mixer
    (recurrent, input and output projections)."""
    out = []
    for name, p in model.named_parameters():
        name = plain_name(name)
        if name.startswith("blocks.") and ".mixer." in name and p.ndim == 2 \
                and name not in out:
            out.append(name)
    return out


# ---- magnitude pruning and the gradual schedules -----------------------------------------
def magnitude_mask(w: Tensor, s: float) -> Tensor:
    """The mask (0 at pruned entries) of the k = round(s n) entries of w with the smallest
    |w| (ties: the lower flat index first)."""
    if not 0.0 <= s <= 1.0:
        raise SeqmemError(f"sparsity must lie in [0, 1], got {s}")
    k = round(s * w.numel())
    order = torch.argsort(w.detach().abs().flatten(), stable=True)
    m = torch.ones(w.numel(), dtype=w.dtype, device=w.device)
    m[order[:k]] = 0
    return m.view_as(w)


def magnitude_masks(model: SequenceModel, s: float, paths: list[str] | None = None
                    ) -> dict[str, Tensor]:
    """`magnitude_mask` at sparsity s of each prunable weight (as the model uses it,
    `used_weight`, so entries masked before are among the smallest and stay masked)."""
    return {p: magnitude_mask(used_weight(model, p), s) for p in (paths or prunable(model))}


def zhu_gupta_sparsity(step: int, *, final: float, initial: float = 0.0, start: int = 0,
                       n_steps: int, every: int = 1) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, pruning at
    t = t0 + k dt for k = 0..n; between pruning steps the sparsity of the last one holds,
    s_i before t0 and s_f from t0 + n dt on."""
    if n_steps < 1 or every < 1:
        raise SeqmemError(f"zhu_gupta: n_steps and every must be >= 1, got {n_steps}, {every}")
    if step < start:
        return initial
    k = min((step - start) // every, n_steps)
    return final + (initial - final) * (1 - k / n_steps) ** 3


def narang_theta(q: float, *, start: int, ramp: int, end: int, freq: int) -> float:
    """Narang et al. (2017), Table 1: theta = 2 q freq / (2 (ramp - start) + 3 (end - ramp))
    (the threshold's slope until `ramp`; phi = 1.5 theta after)."""
    if not start < ramp <= end or freq < 1:
        raise SeqmemError(f"narang: need start < ramp <= end and freq >= 1, got start={start}, "
                          f"ramp={ramp}, end={end}, freq={freq}")
    return 2 * q * freq / (2 * (ramp - start) + 3 * (end - ramp))


def narang_threshold(step: int, *, q: float, start: int, ramp: int, end: int, freq: int
                     ) -> float | None:
    """The threshold eps of Narang et al. (2017), Algorithm 1, at `step`, or None if the
    masks are not updated at that step (outside (start, end), or step % freq != 0):

        eps = theta (t - start + 1) / freq                                  t < ramp
        eps = (theta (ramp - start + 1) + phi (t - ramp + 1)) / freq        t >= ramp
    """
    theta = narang_theta(q, start=start, ramp=ramp, end=end, freq=freq)
    if not start < step < end or step % freq:
        return None
    if step < ramp:
        return theta * (step - start + 1) / freq
    return (theta * (ramp - start + 1) + 1.5 * theta * (step - ramp + 1)) / freq


@dataclass
class GradualPruner:
    """A gradual schedule over `paths` of a model whose masks are attached (all ones at
    first): `__call__(step)` after each update sets the masks of that step.

    zhu_gupta: the masks of `magnitude_masks` at the schedule's s_t (s_i = 0, s_f =
    `final`), from `start` over `n_steps` pruning steps `every` apart. narang: masks &=
    |w| >= eps_t, eps of `narang_threshold` (freq = `every`, end = start + n_steps every + 1,
    ramp half-way) with q the 90th percentile of each tensor's |w| at the first call; its
    heuristic brings eps to about q at the end (about 90 % sparsity), `final` is unused.
    """

    model: SequenceModel
    schedule: str
    final: float
    start: int
    n_steps: int
    every: int
    paths: list[str]
    q: dict | None = None

    def __post_init__(self):
        check_choice("gradual pruning schedule", self.schedule, ("zhu_gupta", "narang"))

    def __call__(self, step: int) -> None:
        m = self.model
        if self.schedule == "zhu_gupta":
            if step < self.start or (step - self.start) % self.every \
                    or (step - self.start) // self.every > self.n_steps:
                return
            s = zhu_gupta_sparsity(step, final=self.final, start=self.start,
                                   n_steps=self.n_steps, every=self.every)
            attach_masks(m, magnitude_masks(m, s, self.paths))
            return
        if self.q is None:
            self.q = {p: float(torch.quantile(
                used_weight(m, p).detach().abs().flatten().double(), 0.9)) for p in self.paths}
        end = self.start + self.n_steps * self.every + 1  # the last update at end - 1
        ramp = self.start + max(1, (end - self.start) // 2)
        masks = masks_of(m)
        new = {}
        for p in self.paths:
            eps = narang_threshold(step, q=self.q[p], start=self.start, ramp=ramp, end=end,
                                   freq=self.every)
            if eps is None:
                return
            new[p] = masks[p] * (used_weight(m, p).detach().abs() >= eps).to(masks[p].dtype)
        attach_masks(m, new)


# ---- structured pruning: dependency groups ---------------------------------------------
@dataclass(frozen=True)
class Slice:
    """Entries `index` along `dim` of parameter `param` belong to the group (`param` is a
    path relative to the mixer in `UNIT_GROUPS` / `HEAD_GROUPS`, relative to the model in
    what `group` returns); `mask`: whether masking them at zero removes them (False: they are
    removed only in a smaller layer, e.g. tau)."""

    param: str
    dim: int
    index: tuple[int, ...]
    mask: bool = True


def _rnn_unit(g: int):
    def groups(m, i: int) -> list[Slice]:
        d = m.d_model
        rows = tuple(k * d + i for k in range(g))
        out = [Slice("weight_ih", 0, rows), Slice("weight_hh", 0, rows),
               Slice("weight_hh", 1, (i,))]
        if m.bias_ih is not None:
            out += [Slice("bias_ih", 0, rows), Slice("bias_hh", 0, rows)]
        return out
    return groups


def _leaky_unit(m, i: int) -> list[Slice]:
    out = [Slice("W", 0, (i,)), Slice("W", 1, (i,)), Slice("tau", 0, (i,), mask=False)]
    if m.U is not None:
        out.append(Slice("U", 0, (i,)))
    if m.b is not None:
        out.append(Slice("b", 0, (i,)))
    return out


#: Per mixer family: the slices of its own parameters that belong to unit i.
UNIT_GROUPS: dict[str, Callable] = {"leaky_rnn": _leaky_unit, "elman": _rnn_unit(1),
                                    "gru": _rnn_unit(3), "lstm": _rnn_unit(4)}
#: Per mixer family: its input weights (dim 1 reads the block's input), the columns of a
#: unit of the block below. None: the input enters unweighted (leaky_rnn without U).
INPUT_WEIGHTS: dict[str, Callable] = {
    "leaky_rnn": lambda m: ["U"] if m.U is not None else None,
    "elman": lambda m: ["weight_ih"], "gru": lambda m: ["weight_ih"],
    "lstm": lambda m: ["weight_ih"],
}


def _span(j: int, width: int) -> tuple[int, ...]:
    return tuple(range(j * width, (j + 1) * width))


def _linear_attn_head(m, j: int) -> list[Slice]:
    return [Slice("qkv.weight", 0, _span(j, 2 * m.d_k + m.d_v)),
            Slice("out.weight", 1, _span(j, m.d_v))]


def _gla_head(m, j: int) -> list[Slice]:
    return [*_linear_attn_head(m, j), Slice("gate_up.weight", 0, _span(j, m.d_k)),
            Slice("gate_up.bias", 0, _span(j, m.d_k)),
            Slice("out_gate.weight", 0, _span(j, m.d_v)),
            Slice("out_gate.bias", 0, _span(j, m.d_v))]


def _delta_head(m, j: int) -> list[Slice]:
    qkv = _span(j, 2 * m.d_k + m.d_v)
    out = [*_linear_attn_head(m, j), Slice("conv.weight", 0, qkv),
           Slice("out_gate.weight", 0, _span(j, m.d_v)),
           Slice("gates.weight", 0, (j, m.n_heads + j) if m.gated else (j,))]
    if m.conv.bias is not None:
        out.append(Slice("conv.bias", 0, qkv))
    if m.gated:
        out += [Slice("A_log", 0, (j,), mask=False), Slice("dt_bias", 0, (j,), mask=False)]
    return out


#: Per mixer family: the slices of its parameters that belong to head j.
HEAD_GROUPS: dict[str, Callable] = {"linear_attn": _linear_attn_head, "gla": _gla_head,
                                    "deltanet": _delta_head, "gated_deltanet": _delta_head}


def structure_of(model: SequenceModel, block: int) -> str:
    """"units" or "heads": what structured pruning removes from that block's mixer."""
    name = model.blocks[block].mixer.name
    if name in UNIT_GROUPS:
        return "units"
    if name in HEAD_GROUPS:
        return "heads"
    raise SeqmemError(f"structured pruning has no dependency groups for mixer {name!r}; it "
                      f"prunes units of {', '.join(UNIT_GROUPS)} and heads of "
                      f"{', '.join(HEAD_GROUPS)}")


def group(model: SequenceModel, block: int, i: int) -> list[Slice]:
    """The dependency group of unit / head i of block `block`, as model-level slices: the
    mixer's own (`UNIT_GROUPS` / `HEAD_GROUPS`) and, for a unit, the columns of what reads
    it (the next block's input weights, or every read-out head) and, where the mixer takes
    its input unweighted, the row of what feeds it (the encoder)."""
    mixer = model.blocks[block].mixer
    prefix = f"blocks.{block}.mixer."
    kind = structure_of(model, block)
    n = mixer.n_heads if kind == "heads" else mixer.d_model
    if not 0 <= i < n:
        raise SeqmemError(f"block {block} has {n} {kind}; got {kind[:-1]} {i}")
    if kind == "heads":
        return [Slice(prefix + s.param, s.dim, s.index, s.mask)
                for s in HEAD_GROUPS[mixer.name](mixer, i)]
    if any(b.kind != "plain" for b in model.blocks):
        raise SeqmemError("structured pruning of units needs plain blocks (a residual block "
                          "adds its input to its output channel by channel, so a unit cannot "
                          "be removed alone); prune heads or weights instead")
    out = [Slice(prefix + s.param, s.dim, s.index, s.mask)
           for s in UNIT_GROUPS[mixer.name](mixer, i)]
    if INPUT_WEIGHTS[mixer.name](mixer) is None:  # the drive is the input itself
        if block > 0:
            raise SeqmemError(f"block {block}'s {mixer.name} takes its input unweighted "
                              f"(input_proj=False): its unit {i} is fed by unit {i} of the "
                              f"block below, so it cannot be removed alone")
        out.append(Slice("encoder.weight", 1 if model.vocab_size else 0, (i,)))
        if not model.vocab_size and model.encoder.bias is not None:
            out.append(Slice("encoder.bias", 0, (i,)))
    if block + 1 < len(model.blocks):
        nxt = model.blocks[block + 1].mixer
        readers = INPUT_WEIGHTS.get(nxt.name, lambda m: None)(nxt)
        if readers is None:
            raise SeqmemError(f"block {block + 1} ({nxt.name}) has no input weights to remove "
                              f"unit {i} of block {block} from")
        out += [Slice(f"blocks.{block + 1}.mixer.{r}", 1, (i,)) for r in readers]
    else:
        out += [Slice(f"heads.{k}.weight", 1, (i,)) for k in range(len(model.heads))]
        if model.regressor is not None:
            out.append(Slice("regressor.weight", 1, (i,)))
    return out


def _select(t: Tensor, s: Slice) -> Tensor:
    return t.index_select(s.dim, torch.tensor(s.index, device=t.device))


def group_score(model: SequenceModel, block: int, i: int) -> float:
    """The L2 norm of the masked entries of unit / head i's group (as the model uses them,
    `used_weight`)."""
    total = 0.0
    for s in group(model, block, i):
        if s.mask:
            w = used_weight(model, s.param).detach()
            total += float(_select(w, s).double().pow(2).sum())
    return math.sqrt(total)


def group_masks(model: SequenceModel, block: int, units) -> dict[str, Tensor]:
    """Masks (the model's current ones, or ones) with the groups of `units` of `block` zero."""
    current = masks_of(model)
    out: dict[str, Tensor] = {}
    for i in units:
        for s in group(model, block, int(i)):
            if not s.mask:
                continue
            if s.param not in out:
                w = weight(model, s.param)
                out[s.param] = current.get(s.param, torch.ones_like(w)).clone()
            idx = torch.tensor(s.index, device=out[s.param].device)
            out[s.param].index_fill_(s.dim, idx, 0)
    return out


def structured_order(model: SequenceModel, block: int) -> list[int]:
    """Units / heads of `block` in the order structured pruning removes them: ascending group
    score (ties: the lower index first)."""
    mixer = model.blocks[block].mixer
    n = mixer.n_heads if structure_of(model, block) == "heads" else mixer.d_model
    scores = [group_score(model, block, i) for i in range(n)]
    return sorted(range(n), key=lambda i: (scores[i], i))


# ---- fine-tuning with the masks held ---------------------------------------------------
def finetune(model: SequenceModel, optimizer: torch.optim.Optimizer, task, heads: list[int], *,
             steps: int, batch_size: int, generator: torch.Generator, clip: float | None = None,
             pruner: Callable[[int], None] | None = None,
             start_step: int = 0) -> list[float]:
    """`steps` updates on fresh batches of `task` (the training loop's `run_batch`), the
    masks held by the parametrisation; `pruner(step)` after each update (a gradual
    schedule). Returns the losses."""
    losses = []
    model.train()
    for k in range(steps):
        loss, _ = run_batch(model, task, batch_size, heads, generator)
        if not torch.isfinite(loss):
            raise SeqmemError(f"fine-tuning diverged: non-finite loss at update {k + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if pruner is not None:
            pruner(start_step + k)
        losses.append(loss.item())
    model.eval()
    return losses
