"""One Block and one SequenceModel (encoder -> blocks -> heads), written once for every mixer.

A SequenceModel is itself steppable (`init_state` / `step`), so analysis can drive a trained
model one token at a time exactly as it runs over a whole sequence.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmem import mixers
from seqmem.errors import SeqmemError, check_choice, check_int

BLOCKS = ("plain", "residual")


def parse_pattern(pattern: str) -> list[str]:
    """The mixer names of one repetition of a layer pattern, in order.

    A pattern is a comma-separated list of registered mixer names, each optionally repeated
    with `*k`: "gated_deltanet*3,attention" -> [gated_deltanet x 3, attention]. A single name
    is the pattern of a plain stack.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise SeqmemError(f"mixer must be a name or a pattern like 'gated_deltanet*3,attention', "
                          f"got {pattern!r}")
    out: list[str] = []
    for part in pattern.split(","):
        name, star, count = part.strip().partition("*")
        name = name.strip()
        if star:
            if not count.strip().isdigit() or int(count) < 1:
                raise SeqmemError(f"mixer pattern {pattern!r}: repeat count in {part.strip()!r} "
                                  f"must be a positive integer (name*k)")
            k = int(count)
        else:
            k = 1
        mixers.lookup(name)  # unknown names: a one-line error listing the accepted ones
        out += [name] * k
    return out


def is_hybrid(pattern: str) -> bool:
    """True if the pattern names more than one distinct mixer."""
    return len(set(parse_pattern(pattern))) > 1


class Block(nn.Module):
    """A mixer inside a block.

    - "plain": y = mixer(x). The RNN of the flagship paper is a single plain block.
    - "residual": y = x + mixer(LayerNorm(x)) (pre-norm), the usual deep-stack block.

    A 2-D mixer (`mixers.Mixer2D`) reads its block's input (b, H*W, d) as the grid
    (b, H, W, d) of `grid` (rows first, cells in raster order) and its output back.
    """

    def __init__(self, mixer: mixers.Mixer, *, kind: str = "plain",
                 grid: tuple[int, int] | None = None):
        super().__init__()
        self.kind = check_choice("block", kind, BLOCKS)
        self.mixer = mixer
        self.grid = tuple(grid) if isinstance(mixer, mixers.Mixer2D) and grid else None
        if isinstance(mixer, mixers.Mixer2D) and (self.grid is None or len(self.grid) != 2):
            raise SeqmemError(f"the 2-D mixer {mixer.name} needs the grid (H, W) of a grid "
                              f"task (SequenceModel(grid=...)), got {grid!r}")
        self.norm = nn.LayerNorm(mixer.d_model) if kind == "residual" else None

    def forward(self, x: Tensor, state=None, *, mode: str | None = None,
                aux: list | None = None, final_state: bool = True):
        """The block's output and state; `aux` (a list): the mixer's auxiliary loss on its
        input (`Mixer.aux_loss`) is appended to it, if the mixer has one. final_state=False:
        the state is not wanted, None comes back (see `Mixer.forward`)."""
        u = self.norm(x) if self.norm is not None else x
        if self.grid is not None:  # (b, H*W, d) <-> (b, H, W, d) around a 2-D mixer
            H, W = self.grid
            if u.shape[1] != H * W:
                raise SeqmemError(f"the 2-D mixer {self.mixer.name} reads grids of {H} x {W} "
                                  f"= {H * W} cells, got sequences of {u.shape[1]} steps")
            y, state = self.mixer(u.unflatten(1, (H, W)), state, mode=mode,
                                  final_state=final_state)
            y = y.flatten(1, 2)
        else:
            y, state = self.mixer(u, state, mode=mode, final_state=final_state)
        if aux is not None and (extra := self.mixer.aux_loss(u)) is not None:
            aux.append(extra)
        return (x + y if self.kind == "residual" else y), state

    def step(self, x_t: Tensor, state):
        y, state = self.mixer.step(self.norm(x_t) if self.norm is not None else x_t, state)
        return (x_t + y if self.kind == "residual" else y), state


class SequenceModel(nn.Module):
    """encoder -> blocks -> classification heads (and / or a linear regression head).

    Args:
        d_input: input channels (real-valued inputs); ignored if `vocab_size` is given.
        d_model: width of the blocks.
        mixer: registry name of the mixer, or a layer pattern of several
            ("gated_deltanet*3,attention": three gated DeltaNet layers, then attention; see
            `parse_pattern`). `mixer_options` are the mixer's keyword hyperparameters; for a
            pattern of several mixers, a dict {mixer name: its options}.
        n_layers: how many times the pattern is stacked (for a single mixer: the number of
            blocks; for "gated_deltanet*3,attention" with n_layers=2: eight blocks).
        block: "plain" or "residual" (see `Block`).
        heads: number of classes of each read-out head (may be empty if `d_output` is set).
        vocab_size: if given, inputs are token ids (b, t) read by an embedding.
        d_output: if given, a linear regression head `regressor` (d_model -> d_output) for
            real-valued targets (`predict`, `masked_mse_loss`).
        grid: (H, W) of a grid task, for blocks of 2-D mixers (`mixers.names_2d()`), which
            read the H*W steps of a sequence as that grid; blocks of 1-D mixers ignore it.
    """

    def __init__(
        self,
        d_input: int,
        d_model: int,
        *,
        mixer: str = "leaky_rnn",
        mixer_options: dict | None = None,
        n_layers: int = 1,
        block: str = "plain",
        heads: list[int] | tuple[int, ...] = (2,),
        vocab_size: int | None = None,
        d_output: int | None = None,
        grid: tuple[int, int] | None = None,
    ):
        super().__init__()
        check_int("n_layers", n_layers)
        if d_output is not None:
            check_int("d_output (None: no regression head)", d_output)
        if (not heads and d_output is None) or any(c < 2 for c in heads):
            raise SeqmemError(f"heads must be a non-empty list of class counts >= 2 (or empty "
                              f"with a regression head, d_output), got {heads}")
        self.d_input, self.d_model, self.vocab_size = d_input, d_model, vocab_size
        self.encoder = (
            nn.Embedding(vocab_size, d_model) if vocab_size else nn.Linear(d_input, d_model)
        )
        names = parse_pattern(mixer) * n_layers
        options = mixer_options or {}
        if len(set(names)) > 1:
            unknown = sorted(set(options) - set(names))
            if unknown or not all(isinstance(v, dict) for v in options.values()):
                raise SeqmemError(
                    f"options of the hybrid {mixer!r} are a dict {{mixer name: options}} with "
                    f"names among {', '.join(sorted(set(names)))}; got keys {sorted(options)}")
            per_name = {n: options.get(n, {}) for n in set(names)}
        else:
            per_name = {names[0]: options}
        self.mixer_pattern = mixer
        self.blocks = nn.ModuleList(
            Block(mixers.build_2d(n, d_model, **per_name[n]), kind=block, grid=grid)
            if mixers.is_2d(n) else Block(mixers.build(n, d_model, **per_name[n]), kind=block)
            for n in names
        )
        self.grid = tuple(grid) if grid else None
        self.heads = nn.ModuleList(nn.Linear(d_model, c) for c in heads)
        self.d_output = d_output
        self.regressor = nn.Linear(d_model, d_output) if d_output is not None else None

    # ---- sequence form ------------------------------------------------------------------
    def features(self, x: Tensor, state: list | None = None, *, mode: str | None = None,
                 aux: list | None = None, final_state: bool = True):
        """Hidden features of the last block, (b, t, d_model), and the list of block states.
        `aux` (a list): every block's auxiliary loss (`Mixer.aux_loss`) is appended to it.
        final_state=False (a training batch): the final states are not built where a mixer
        can skip them (attention's KV cache), and the list holds None for each block."""
        h = self.encode(x)
        state = state if state is not None else [None] * len(self.blocks)
        new_state = []
        for blk, s in zip(self.blocks, state, strict=True):
            h, s = blk(h, s, mode=mode, aux=aux, final_state=final_state)
            new_state.append(s)
        return h, new_state

    def encode(self, x: Tensor) -> Tensor:
        if self.vocab_size:
            if x.dtype != torch.long or x.ndim != 2:
                raise SeqmemError(f"token inputs must be a long tensor (batch, time), got "
                                  f"{x.dtype} {tuple(x.shape)}")
        elif x.ndim != 3 or x.shape[-1] != self.d_input:
            raise SeqmemError(f"inputs must have shape (batch, time, {self.d_input}), got "
                              f"{tuple(x.shape)}")
        return self.encoder(x)

    def readout(self, h: Tensor, heads: list[int] | None = None) -> list[Tensor]:
        """Logits of each head in `heads` (default all) for features h (..., d_model)."""
        idx = range(len(self.heads)) if heads is None else heads
        return [self.heads[i](h) for i in idx]

    def predict(self, h: Tensor) -> Tensor:
        """The regression head's output (..., d_output) for features h (..., d_model)."""
        if self.regressor is None:
            raise SeqmemError("this model has no regression head; build it with d_output=...")
        return self.regressor(h)

    def forward(self, x: Tensor, state: list | None = None, *, heads: list[int] | None = None,
                mode: str | None = None):
        """Logits of every time step for each head in `heads`, and the final block states."""
        h, state = self.features(x, state, mode=mode)
        return self.readout(h, heads), state

    # ---- step form ----------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device=None, dtype=None,
                   generator: torch.Generator | None = None, drawn_only: bool = False) -> list:
        """Initial state of every block (random initial states draw from `generator`).
        drawn_only=True: None for each block whose mixer's init_state draws nothing (forward
        builds the same state from None, and attention then skips its empty cache)."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        states = []
        for blk in self.blocks:
            kw = {}
            if "generator" in inspect.signature(blk.mixer.init_state).parameters:
                kw["generator"] = generator
            elif drawn_only:
                states.append(None)
                continue
            width = (blk.grid[1],) if blk.grid is not None else ()  # a 2-D mixer's
            states.append(blk.mixer.init_state(batch_size, *width, device=device, dtype=dtype,
                                               **kw))
        return states

    def step(self, x_t: Tensor, state: list):
        """One step: x_t (b, d_input) (or (b,) token ids) -> features (b, d_model), new states."""
        h = self.encoder(x_t)
        new_state = []
        for blk, s in zip(self.blocks, state, strict=True):
            h, s = blk.step(h, s)
            new_state.append(s)
        return h, new_state

    def mixer_modules(self) -> list[mixers.Mixer]:
        return [blk.mixer for blk in self.blocks]

    def timescales(self) -> Tensor | None:
        """Per-unit timescales of every block, concatenated (None if a mixer defines none)."""
        ts = [m.timescales() for m in self.mixer_modules()]
        if any(t is None for t in ts):
            return None
        return torch.cat([t.reshape(-1) for t in ts])


def masked_heads_loss(model: SequenceModel, h: Tensor, targets: Tensor, mask: Tensor,
                      heads: list[int]) -> tuple[Tensor, Tensor]:
    """Cross-entropy summed over `heads` (each a mean over supervised positions) and accuracy.

    h: (b, t, d) features; targets: (b, t, n_active) class ids, column j for head heads[j];
    mask: (b, t) supervised positions. Heads are read out only where mask is True, all heads
    with the same number of classes in one batched product.
    Returns (loss, acc (n_active,)).
    """
    if targets.shape[-1] != len(heads):
        raise SeqmemError(f"targets have {targets.shape[-1]} heads but {len(heads)} heads are "
                          f"active")
    if not mask[:, :-1].any() and mask[:, -1].all():  # labels at the last step only
        h_sel, t_sel = h[:, -1], targets[:, -1]  # (b, d), (b, n_active)
    else:
        h_sel, t_sel = h[mask], targets[mask]  # (n, d), (n, n_active)
    loss = h.new_zeros(())
    accs = h.new_zeros(len(heads))
    groups: dict[int, list[int]] = {}
    for j, i in enumerate(heads):
        groups.setdefault(model.heads[i].out_features, []).append(j)
    for c, cols in groups.items():
        W = torch.stack([model.heads[heads[j]].weight for j in cols])  # (k, c, d)
        b = torch.stack([model.heads[heads[j]].bias for j in cols])  # (k, c)
        logits = torch.einsum("nd,kcd->nkc", h_sel, W) + b  # (n, k, c)
        tgt = t_sel[:, cols]  # (n, k)
        ce = F.cross_entropy(logits.reshape(-1, c), tgt.reshape(-1), reduction="none")
        loss = loss + ce.view(tgt.shape).mean(0).sum()
        accs[cols] = (logits.detach().argmax(-1) == tgt).to(h.dtype).mean(0)
    return loss, accs


def masked_mse(pred: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean squared error of predictions (b, t, d) against targets (b, t, d) over the
    supervised positions `mask` (b, t). Returns (loss, mse per channel (d,)); loss is the mean
    of the per-channel MSEs (the MSE over positions and channels)."""
    if pred.shape != targets.shape:
        raise SeqmemError(f"predictions {tuple(pred.shape)} and targets "
                          f"{tuple(targets.shape)} differ in shape")
    per_channel = ((pred[mask] - targets[mask].to(pred.dtype)) ** 2).mean(0)  # (d,)
    return per_channel.mean(), per_channel.detach()


def masked_mse_loss(model: SequenceModel, h: Tensor, targets: Tensor, mask: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """`masked_mse` of the regression head's predictions for features h (b, t, d_model)
    against targets (b, t, d_output). Returns (loss, mse per channel (d_output,))."""
    if model.regressor is None:
        raise SeqmemError("a regression task needs a model with a regression head (d_output)")
    return masked_mse(model.predict(h), targets, mask)
