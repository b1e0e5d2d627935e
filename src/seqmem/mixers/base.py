"""The mixer contract and the mixer registry.

A mixer is an RNN first: a causal map (b, t, d) -> (b, t, d) with an explicit state that is
passed in and returned, never stored on the module. Every declared mode computes the same
function as a loop of `step`; the contract test suite (tests/test_mixer_contract.py) checks it
for every registered mixer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from seqmem.errors import SeqmemError, check_int
from seqmem.ops.loops import step_loop as ops_step_loop
from seqmem.registry import Registry, hyperparameters  # noqa: F401  (re-exported)

State = Any  # a Tensor or a NamedTuple of Tensors

_REGISTRY = Registry("mixer")


class Mixer(nn.Module):
    """Base class of every mixer.

    Subclasses set `modes` (first = default) and implement `_forward(x, state, mode, chunk_size)`,
    `step`, `init_state`, `state_size` and optionally `timescales`.
    """

    modes: ClassVar[tuple[str, ...]] = ("recurrent",)
    name: ClassVar[str] = ""
    state_grows: ClassVar[bool] = False  # True: the state is a cache that fills with t
    # The optimizer the mixer's source trains it with, used by recipes that defer the choice
    # to the mixer (the flagship paper's: SGD for its RNNs); None: the recipe's own choice.
    recipe_optimizer: ClassVar[str | None] = None

    # parameters renamed since earlier checkpoints, {old state_dict key: new key}: an old
    # checkpoint still loads (`_load_from_state_dict`)
    legacy_names: ClassVar[dict[str, str]] = {}

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = check_int(f"{self.name or type(self).__name__}: d_model", d_model)

    # ---- the contract -------------------------------------------------------------------
    def forward(
        self, x: Tensor, state: State = None, *, mode: str | None = None, chunk_size: int = 64
    ) -> tuple[Tensor, State]:
        """Map x (b, t, d_model) to y (b, t, d_model), starting from `state` (zeros if None).
        A sequence of no tokens (t = 0) gives an empty y and leaves the state as it is."""
        mode = self.check_mode(mode)
        self.check_input(x, ndim=3)
        check_int(f"{self.name or type(self).__name__}: chunk_size", chunk_size)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        return self._forward(x, state, mode, chunk_size)

    def _forward(self, x: Tensor, state: State, mode: str, chunk_size: int):
        raise NotImplementedError

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: x_t (b, d_model) -> y_t (b, d_model) and the next state."""
        raise NotImplementedError

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        raise NotImplementedError

    def state_size(self) -> int:
        """Floats of state per sequence."""
        raise NotImplementedError

    def state_options(self, device=None, dtype=None) -> dict:
        """The device and dtype of a new state, {"device": ..., "dtype": ...}: those given,
        else the parameters' (a state follows its module unless told otherwise)."""
        p = next(self.parameters())
        return {"device": device or p.device, "dtype": dtype or p.dtype}

    def timescales(self) -> Tensor | None:
        """Per-channel memory time constant in steps, or None where it is not defined."""
        return None

    # ---- shared checks ------------------------------------------------------------------
    def check_mode(self, mode: str | None) -> str:
        if mode is None:
            return self.modes[0]
        if mode not in self.modes:
            raise ValueError(
                f"{type(self).__name__} has no mode {mode!r}; its modes: {', '.join(self.modes)}"
            )
        return mode

    def check_input(self, x: Tensor, *, ndim: int) -> None:
        """Raise a one-line SeqmemError unless x is a floating tensor (..., d_model) of ndim."""
        what = "(batch, time, d_model)" if ndim == 3 else "(batch, d_model)"
        if not isinstance(x, Tensor):
            raise SeqmemError(f"{self.name or type(self).__name__}: expected a Tensor {what}, "
                              f"got {type(x).__name__}")
        if x.ndim != ndim or x.shape[-1] != self.d_model:
            raise SeqmemError(
                f"{self.name or type(self).__name__}: expected input of shape {what} with "
                f"d_model={self.d_model}, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise SeqmemError(
                f"{self.name or type(self).__name__}: expected a floating-point input "
                f"(float32 or float64), got {x.dtype}"
            )
        p = next(self.parameters(), None)
        if p is not None and p.dtype != x.dtype:
            raise SeqmemError(
                f"{self.name or type(self).__name__}: input dtype {x.dtype} does not match the "
                f"parameters' dtype {p.dtype}; convert one with .to(dtype)"
            )

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self.legacy_names.items():  # keys of earlier checkpoints
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def step_loop(mixer: Mixer, x: Tensor, state: State) -> tuple[Tensor, State]:
    """The reference: run `mixer.step` over time (`seqmem.ops.loops.step_loop`). Returns
    (y (b, t, d), final state)."""
    return ops_step_loop(mixer.step, (x,), state)


def checkpointed_segments(forward: Callable[[Tensor, State], tuple[Tensor, State]], x: Tensor,
                          state: State, segment: int) -> tuple[Tensor, State]:
    """forward(x, state) -> (y, state) over consecutive segments of `segment` tokens, the state
    carried from one to the next, each segment under activation checkpointing: its
    intermediates are dropped after the forward and recomputed in the backward, so training
    memory holds one segment's activations (plus the segments' inputs, outputs and states)
    rather than the whole sequence's, for about one extra forward. Exact for any mixer whose
    forward passes state (the contract): the same outputs, states and gradients."""
    if x.shape[1] == 0:
        return forward(x, state)
    flat, spec = tree_flatten(state)
    ys = []
    for start in range(0, x.shape[1], segment):
        def run(xs, *leaves):
            y, new = forward(xs, tree_unflatten(list(leaves), spec))
            return (y, *tree_flatten(new)[0])

        y, *flat = checkpoint(run, x[:, start:start + segment], *flat, use_reentrant=False)
        ys.append(y)
    return torch.cat(ys, dim=1), tree_unflatten(flat, spec)


# ---- registry ---------------------------------------------------------------------------
register = _REGISTRY.register
names = _REGISTRY.names
get = _REGISTRY.get


def build(name: str, d_model: int, **kw) -> Mixer:
    """Build the mixer registered as `name` with `d_model` and keyword hyperparameters."""
    return _REGISTRY.check_options(name, kw)(d_model, **kw)
