"""Loops over time shared by the ops: the loop of a step function, and the pieces of every
chunked form (cutting a sequence into chunks, the causal decay matrix inside a chunk, the state
carried from chunk to chunk).

    step_loop     (y_t, S_t) = step(x_t, ..., S_{t-1}) for t = 1..T, outputs stacked on time
    chunk         (b, t, h, ...) -> (b, h, n, C, ...), padded at the end to n C tokens
    causal_decay  D[t, s] = exp(b_t - b_s) for s <= t, exactly 0 above the diagonal
    carry         S_i = a_i S_{i-1} + KV_i across the chunks i = 1..n
    float32_recurrence   a recurrence op run in float32 with autocast off, under autocast

Every `<family>_recurrent` form that is "the loop of `<family>_step`" is `step_loop` of that
step; forms whose loop is written by hand for speed (the RNNs' fused loops and hand-written
backward passes in `ops.rnn`, the chunked selective scan) keep their own. Time slices are taken
by `unbind`, never by indexing: indexing x[:, t] gives one backward node per token, each
writing a gradient the size of the whole input, so the backward grows quadratically in T.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

F_ = TypeVar("F_", bound=Callable[..., Any])
_LOW = (torch.float16, torch.bfloat16)
# one call that is False unless some device type has autocast on (torch.compile folds it)
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def _first_device_type(obj: Any) -> str | None:
    """The device type of the first tensor in obj (a tensor, or nested tuples / lists)."""
    if isinstance(obj, Tensor):
        return obj.device.type
    if isinstance(obj, (tuple, list)):
        for part in obj:
            if (found := _first_device_type(part)) is not None:
                return found
    return None


def map_tensors(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    """obj with fn applied to every tensor in it, through tuples, NamedTuples, lists and
    dicts (a state, or the arguments of an op); anything else as it is."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        parts = [map_tensors(fn, part) for part in obj]
        return type(obj)(*parts) if hasattr(obj, "_fields") else tuple(parts)
    if isinstance(obj, list):
        return [map_tensors(fn, part) for part in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


def _upcast(obj: Any) -> Any:
    """obj with every float16 / bfloat16 tensor cast to float32 (`map_tensors`); float32,
    float64, complex and integer tensors and non-tensors as they are."""
    return map_tensors(lambda t: t.float() if t.dtype in _LOW else t, obj)


def float32_recurrence(fn: F_) -> F_:
    """`fn` run in float32 when autocast is on for the device of its tensor arguments.

    Under bf16 / fp16 autocast a recurrence loses its memory in the low precision: a decay
    a = 1 - 1e-3 is 1.0 in bfloat16 (8 bits of mantissa), and a state summed over T steps
    carries each step's rounding error T times. So, as fla's and mamba-ssm's kernels keep
    their states and decays in float32, the wrapped op casts every float16 / bfloat16 tensor
    argument (inside tuple and NamedTuple states too) to float32 and runs with autocast
    disabled; its outputs come back as computed, in float32, and the projections around it
    stay in the low precision. float64 arguments are not lowered (autocast leaves them
    alone as well).

    Without autocast the wrapper is one call of a torch flag and then `fn` itself: the same
    result bit for bit, the same autograd graph (hand-written autograd Functions included).
    The device type is that of the first tensor argument (positional, then keyword).

    The backward of the ops' hand-written autograd Functions is wrapped too (below its
    `@staticmethod`): a backward called inside the autocast region then runs in float32 as
    its forward did. A kernel backend dispatched from inside a wrapped op gets float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _any_autocast():
            return fn(*args, **kwargs)
        device_type = _first_device_type(args)
        if device_type is None:
            device_type = _first_device_type(tuple(kwargs.values()))
        if device_type is None or not torch.is_autocast_enabled(device_type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return fn(*_upcast(args), **{k: _upcast(v) for k, v in kwargs.items()})

    wrapper.float32_recurrence = True  # marks a wrapped op (the precision tests list them)
    return wrapper  # type: ignore[return-value]


def step_loop(step: Callable[..., tuple[Tensor, Any]], inputs: Sequence[Tensor], state: Any, *,
              empty: Tensor | None = None) -> tuple[Tensor, Any]:
    """The loop of a step over time: y_t, state = step(*inputs_t, state) for every t, where
    inputs_t are the time slices inputs[i][:, t]. Returns (y (b, t, ...) the stacked y_t, the
    final state).

    inputs: tensors with time on axis 1 (b, t, ...), all of the same length t; anything the
    step needs that is not per token (weights, a scale) is bound into `step` by the caller.
    state: any state `step` accepts (a tensor, a NamedTuple of tensors). empty: the output for
    t = 0 (then `step` is never called and the state is returned as it came); None means zeros
    shaped like inputs[0], right wherever y_t has the shape of the first input's slice."""
    ys = []
    for inputs_t in zip(*(x.unbind(1) for x in inputs), strict=True):
        y_t, state = step(*inputs_t, state)
        ys.append(y_t)
    if not ys:
        return (inputs[0].new_zeros(inputs[0].shape) if empty is None else empty), state
    return torch.stack(ys, dim=1), state


def chunk(x: Tensor, size: int, *, fill: float = 0.0) -> Tensor:
    """(b, t, h, ...) -> (b, h, n, size, ...) with n = ceil(t / size): consecutive chunks of
    `size` tokens, heads moved before the chunks, padded at the end with `fill` to n * size
    tokens; contiguous (a strided batch of matrix products is slow on a CPU).

    The fill is chosen by the caller so that a padded token changes nothing: 0 for inputs,
    keys, values and log decays (it writes nothing and forgets nothing), 1 for a decay factor;
    the state after the padding is then the state after the last real token."""
    b, t, h = x.shape[:3]
    n = -(-t // size)
    x = x.movedim(1, 2)  # (b, h, t, ...)
    if n * size > t:
        x = F.pad(x, [0, 0] * (x.ndim - 3) + [0, n * size - t], value=fill)
    return x.reshape(b, h, n, size, *x.shape[3:]).contiguous()


def unchunk(o: Tensor, t: int) -> Tensor:
    """The inverse of `chunk` for a per-token output: (b, h, n, C, d) -> (b, t, h, d), the
    padding dropped."""
    b, h, n, C, d = o.shape
    return o.reshape(b, h, n * C, d)[:, :, :t].movedim(2, 1)


def causal_decay(b_cum: Tensor, *, strict: bool = False) -> Tensor:
    """D[..., t, s] = exp(b_t - b_s) for s <= t (s < t if strict), exactly 0 elsewhere, from
    cumulative log decays b_cum (..., C). The exponent is masked before the exponential, so no
    positive exponent is ever formed when the log decays are <= 0; the mask is multiplicative
    (torch.where with a broadcast mask is far slower on a CPU)."""
    C = b_cum.shape[-1]
    mask = torch.ones(C, C, dtype=b_cum.dtype, device=b_cum.device).tril(-1 if strict else 0)
    diff = b_cum[..., :, None] - b_cum[..., None, :]  # (..., C, C)
    return (diff * mask).exp() * mask  # masked exponents are 0 (finite), then zeroed


def carry(decay: Tensor, KV: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """Pass a state across chunks, S_i = decay_i * S_{i-1} + KV_i: decay (b, h, n, ...)
    broadcasting against KV (b, h, n, d_k, d_v), S (b, h, d_k, d_v) the state before the first
    chunk. Returns the state at the start of every chunk (b, h, n, d_k, d_v) and the final
    state."""
    starts = []
    for a_i, KV_i in zip(decay.unbind(2), KV.unbind(2), strict=True):
        starts.append(S)
        S = a_i * S + KV_i  # (b, h, d_k, d_v)
    return torch.stack(starts, dim=2), S
