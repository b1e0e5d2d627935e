"""The mixer contract and the mixer registry.

A mixer is an RNN first: a causal map (b, t, d) -> (b, t, d) with an explicit state that is
passed in and returned, never stored on the module. Every declared mode computes the same
function as a loop of `step`; the contract test suite (tests/test_mixer_contract.py) checks it
for every registered mixer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten
from torch.utils.checkpoint import checkpoint

from seqmem.errors import SeqmemError, check_int
from seqmem.ops.loops import step_loop as ops_step_loop
from seqmem.registry import Registry, hyperparameters  # noqa: F401  (re-exported)

State = Any  # a Tensor or a NamedTuple of Tensors

_REGISTRY = Registry("mixer")
_UNSET = object()  # a cache entry not computed yet


class Mixer(nn.Module):
    """Base class of every mixer.

    Subclasses set `modes` (first = default) and implement `_forward(x, state, mode, chunk_size)`,
    `_step(x_t, state)`, `init_state`, `state_size` and optionally `timescales`. `forward` and
    `step` check their input and the state they are given, then call `_forward` / `_step`, which
    may trust both.

    The state check (`check_state`) compares a given state with the structure of
    `init_state(b, device=x.device, dtype=x.dtype)`: the same type (a Tensor; a NamedTuple of
    the same class, or a plain tuple of its length, which is read as that NamedTuple; a tuple
    of the same length), recursively, and the same shapes, dtype and device for every tensor.
    A wrong state raises one SeqmemError naming the mixer and the part that differs. The check
    reads only shapes, dtypes and devices (the expected structure is built once per batch size
    and dtype, on the meta device), so it costs microseconds per `step`. A mixer whose state
    may differ from a fresh one in some sizes (a cache that grows with t, a buffer of varying
    fill) declares them in `state_variable_dims`, {part: dims whose size may vary}, the part
    named as in the error messages ("k", "conv[2]", "" for a state that is one tensor); a mixer
    with another rule overrides `check_state`. (attention's, rat's and tcnca's caches and chunk
    buffers have a fixed number of slots, the empty ones marked by their log-weights, so their
    shapes are those of init_state and they declare nothing.)

    NaN and inf: the step loop is causal for non-finite inputs too (a NaN at t leaves every
    output before t as it was), and so are the loop forms ("recurrent"), the fused LSTM and
    the Newton forms. Many chunked, parallel and convolutional forms are causal for finite
    inputs only: they combine the positions of a chunk (or of the whole sequence) in products
    whose causal mask is a factor 0 or a masked sum, and 0 * NaN is NaN, so a NaN at t can
    make earlier outputs NaN (tests/test_faults_mixers.py records which mixers' default forms
    do). The math is not changed for it: inputs are checked for finite values before such a
    forward where it matters (the training loop does).
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
    # parts of the state whose size may differ from init_state's along some dims, {part:
    # dims} (see the class docstring); a part is named as in check_state's messages
    state_variable_dims: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = check_int(f"{self.name or type(self).__name__}: d_model", d_model)
        # the expected state structure per (batch size, dtype), built by `check_state`
        self._state_specs: dict[tuple, _Spec] = {}

    # ---- the contract -------------------------------------------------------------------
    def forward(
        self, x: Tensor, state: State = None, *, mode: str | None = None,
        chunk_size: int | None = None, final_state: bool = True
    ) -> tuple[Tensor, State]:
        """Map x (b, t, d_model) to y (b, t, d_model), starting from `state` (zeros if None).
        A sequence of no tokens (t = 0) gives an empty y and leaves the state as it is.
        chunk_size: the chunk length of a chunked form; None: each op's default for this
        machine (`seqmem.ops.tuning.chunk_size`). final_state=False: the caller does not want
        the final state (a training batch), and None is returned in its place; a mixer may
        then skip building it (attention's KV cache)."""
        mode = self.check_mode(mode)
        self.check_input(x, ndim=3)
        if chunk_size is not None:
            check_int(f"{self.name or type(self).__name__}: chunk_size", chunk_size)
        state = self._given_state(x, state)
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), (state if final_state else None)
        y, state = self._forward(x, state, mode, chunk_size)
        return y, (state if final_state else None)

    def _forward(self, x: Tensor, state: State, mode: str, chunk_size: int | None):
        raise NotImplementedError

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step: x_t (b, d_model) -> y_t (b, d_model) and the next state, from `state`
        (zeros if None)."""
        self.check_input(x_t, ndim=2)
        return self._step(x_t, self._given_state(x_t, state))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def _step_loop(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """The loop of `_step` over x (b, t, d_model), for the forms that are that loop (x and
        state checked once by `forward`, not at every token)."""
        return ops_step_loop(self._step, (x,), state)

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

    def aux_loss(self, x: Tensor) -> Tensor | None:
        """An auxiliary training loss (a 0-d tensor) on the mixer's input x (b, t, d), e.g. a
        router's load balancing, or None (the default: none). A function of x alone, never
        of stored values, so forward's outputs do not depend on it; `SequenceModel.features`
        collects it from every block when asked (`aux=`) and the training loop adds it."""
        return None

    # ---- shared checks ------------------------------------------------------------------
    def _given_state(self, x: Tensor, state: State) -> State:
        """The state to start from for input x (b, ..., d): init_state if None, else `state`
        checked against it."""
        dtype = self._state_dtype(x)
        if state is None:
            return self.init_state(x.shape[0], device=x.device, dtype=dtype)
        return self.check_state(state, x.shape[0], device=x.device, dtype=dtype)

    def _state_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype of the state for input x: x's, except under autocast, where x comes in
        the low precision and the state stays in the parameters' (float32)."""
        if _autocast_input(x):
            return self._parameter_dtype() or torch.float32
        return x.dtype

    def check_state(self, state: State, batch_size: int, *, device=None, dtype=None) -> State:
        """Return `state` if it has the structure of init_state(batch_size, device=device,
        dtype=dtype) (device and dtype: the parameters' if None), else raise a one-line
        SeqmemError naming the part that differs. A plain tuple given for a NamedTuple state
        comes back as that NamedTuple. Sizes along `state_variable_dims` are not compared."""
        if device is None or dtype is None:
            opts = self.state_options(device, dtype)
            device, dtype = opts["device"], opts["dtype"]
        spec = self._state_specs.get((batch_size, dtype))
        if spec is None:  # shapes only: init_state on the meta device allocates nothing
            spec = _spec(self.init_state(batch_size, device="meta", dtype=dtype), "",
                         self.state_variable_dims)
            self._state_specs[batch_size, dtype] = spec
        return _match(self, state, spec, torch.device(device), batch_size)

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
        dtype = self._parameter_dtype()
        if dtype is not None and dtype != x.dtype and not _autocast_input(x):
            raise SeqmemError(
                f"{self.name or type(self).__name__}: input dtype {x.dtype} does not match the "
                f"parameters' dtype {dtype}; convert one with .to(dtype)"
            )

    def _parameter_dtype(self) -> torch.dtype | None:
        """The first parameter's dtype (None without parameters), cached: walking the
        module tree costs as much as a small step. `.to()`, `.double()` and loading a
        state dict (`_apply`, `_load_from_state_dict`) forget it."""
        cached = self.__dict__.get("_dtype_cache", _UNSET)
        if cached is _UNSET:
            p = next(self.parameters(), None)
            cached = self.__dict__["_dtype_cache"] = None if p is None else p.dtype
        return cached

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_dtype_cache", None)
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.__dict__.pop("_dtype_cache", None)
        for old, new in self.legacy_names.items():  # keys of earlier checkpoints
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---- the state check ------------------------------------------------------------------------
class _Spec(NamedTuple):
    """The expected structure of one part of a state: a tensor's shape and dtype (kind None),
    or a tuple's type and parts. `path` names the part in messages ("", ".k", ".conv[2]");
    `free` the dims whose size is not compared."""

    kind: type | None
    path: str
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    free: tuple[int, ...]
    parts: tuple[_Spec, ...]


def _spec(value: State, path: str, variable: dict[str, tuple[int, ...]]) -> _Spec:
    if isinstance(value, Tensor):
        return _Spec(None, path, tuple(value.shape), value.dtype,
                     tuple(variable.get(path.lstrip("."), ())), ())
    fields = getattr(value, "_fields", None)
    names = [f".{f}" for f in fields] if fields else [f"[{i}]" for i in range(len(value))]
    return _Spec(type(value), path, (), None, (),
                 tuple(_spec(v, path + n, variable) for v, n in zip(value, names, strict=True)))


def _shape_text(spec: _Spec) -> str:
    dims = ["*" if i in spec.free else str(n) for i, n in enumerate(spec.shape)]
    return f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"


def _expected_text(spec: _Spec) -> str:
    if spec.kind is None:
        return f"a Tensor of shape {_shape_text(spec)}"
    if spec.kind is tuple:
        return f"a tuple of {len(spec.parts)} parts"
    fields = ", ".join(p.path.rsplit(".", 1)[-1] for p in spec.parts)
    return f"{_a(spec.kind.__name__)} ({fields})"


def _a(name: str) -> str:
    """"a Tensor", "an AarenState", "an LSTMState" (an initialism reads letter by letter)."""
    spelled = name[:2].isupper()
    return f"{'an' if name[0].upper() in ('AEFHILMNORSX' if spelled else 'AEIOU') else 'a'} {name}"


def _match(mixer: Mixer, state: State, spec: _Spec, device: torch.device, batch: int) -> State:
    """`state` if it matches spec (a plain tuple rebuilt as spec's NamedTuple), else raise."""
    if spec.kind is None:
        if isinstance(state, Tensor):
            shape = state.shape
            if shape == spec.shape or (spec.free and len(shape) == len(spec.shape) and all(
                    a == b for i, (a, b) in enumerate(zip(shape, spec.shape, strict=True))
                    if i not in spec.free)):
                if state.dtype != spec.dtype:
                    _state_error(mixer, spec, f"has dtype {state.dtype}, expected {spec.dtype} "
                                              f"(the input's dtype)")
                if state.device != device:
                    _state_error(mixer, spec, f"is on {state.device}, expected {device} "
                                              f"(the input's device)")
                return state
            _state_error(mixer, spec, f"has shape {tuple(shape)}, expected {_shape_text(spec)} "
                                      f"(from init_state({batch}))")
        _state_error(mixer, spec, f"is {_a(type(state).__name__)}, expected {_expected_text(spec)} "
                                  f"(from init_state({batch}))")
    if type(state) is not spec.kind and not (type(state) is tuple and spec.kind is not tuple):
        _state_error(mixer, spec, f"is {_a(type(state).__name__)}, expected {_expected_text(spec)} "
                                  f"(from init_state({batch}))")
    if len(state) != len(spec.parts):
        _state_error(mixer, spec, f"has {len(state)} parts, expected {_expected_text(spec)} "
                                  f"(from init_state({batch}))")
    parts = [_match(mixer, s, p, device, batch) for s, p in zip(state, spec.parts, strict=True)]
    if type(state) is spec.kind and all(a is b for a, b in zip(parts, state, strict=True)):
        return state
    return spec.kind(*parts) if spec.kind is not tuple else tuple(parts)


def _state_error(mixer: Mixer, spec: _Spec, problem: str):
    raise SeqmemError(f"{mixer.name or type(mixer).__name__}: state{spec.path} {problem}; pass "
                      f"the state this mixer returned, or None")


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


def _autocast_input(x: Tensor) -> bool:
    """Whether x is in the dtype of an autocast region enabled for its device (bf16 or fp16
    activations of a mixed-precision forward, `seqmem.devices.autocast`)."""
    kind = x.device.type
    return (x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(kind)
            and torch.get_autocast_dtype(kind) == x.dtype)
