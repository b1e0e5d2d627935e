"""Kernel backends: optional dispatch targets of seqmem's ops on CUDA, never a second
implementation of a recurrence. seqmem's own forms (`<family>_step` and the forms tested
against its loop) stay the specification; a backend is a faster route to the same numbers,
and every mapping below is tested against seqmem's own forms (tests/test_backends.py).

    backend      kernels                                             package (extra seqmem[gpu])
    torch        seqmem's own forms
    fla          chunk_simple_gla (linear_attention, retention, ssd),
                 chunk_gla, chunk_delta_rule, chunk_gated_delta_rule   flash-linear-attention
    mamba_ssm    selective_scan_fn (selective_scan)                  mamba-ssm
                 causal_conv1d_fn (short_conv)                        causal-conv1d
    auto         the kernel when the inputs are on CUDA, its package imports and it supports
                 the call (mode, dtype, sizes, options), else seqmem's own forms

The choice is per op and per context (a contextvar): `use("fla")`, `use({"gla": "torch"})`,
`choice(op)`. A spec naming one kernel backend applies it to the ops it serves and runs the
others in seqmem's own forms. On CPU tensors "auto" returns at its first check, so it changes
nothing there; the kernels' imports are tried once per process and cached.

Each mapping function takes the kernel as its first argument (so a test can hand it a
CPU-runnable reference with the kernel's calling convention) and translates seqmem's
conventions into the kernel's: layout (b, t, h, d) or (b, t, d) versus (b, d, t), scale,
gate order (the delta rules' g and beta are passed by keyword), states in float32 where the
kernel asks for it, the state transposed where the kernel's is (ssd's (p, n) is simple GLA's
(d_v, d_k)). Final states are returned in the dtype seqmem's own form gives them, so a
mixer's state checks see the same state from every backend.

Two kernel conventions that seqmem does not follow and that decide what "supported" means:
fla 0.6's chunk_simple_gla gives no gradient to a per-head decay passed as g_gamma, so
retention passes its decay as a per-token gate g (whose gradient sums back to log_decay);
mamba-ssm's selective_scan_fn takes no initial state and gives no gradient through its last
state (its docstring says so), so a call with a state runs seqmem's own scan and the final
state it returns raises if a gradient reaches it. ssd is served by chunk_simple_gla, not by
mamba-ssm's mamba_chunk_scan_combined: that kernel writes the decay as dt_t A with A per head
and scales the input by dt_t, a factoring seqmem's ssd (a free log decay a_t per token) has
already multiplied out and could only undo by dividing by dt_t.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import torch
from torch import Tensor

from seqmem.errors import SeqmemError

BACKENDS = ("auto", "torch", "fla", "mamba_ssm")
OPS = ("linear_attention", "retention", "gla", "delta_rule", "gated_delta_rule", "ssd",
       "selective_scan", "short_conv")

# (backend, op) -> (module, function, package to install); a backend's order in SERVES is
# auto's order of preference for an op
_KERNELS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("fla", "linear_attention"): ("fla.ops.simple_gla", "chunk_simple_gla",
                                  "flash-linear-attention"),
    ("fla", "retention"): ("fla.ops.simple_gla", "chunk_simple_gla", "flash-linear-attention"),
    ("fla", "gla"): ("fla.ops.gla", "chunk_gla", "flash-linear-attention"),
    ("fla", "delta_rule"): ("fla.ops.delta_rule", "chunk_delta_rule", "flash-linear-attention"),
    ("fla", "gated_delta_rule"): ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule",
                                  "flash-linear-attention"),
    ("fla", "ssd"): ("fla.ops.simple_gla", "chunk_simple_gla", "flash-linear-attention"),
    ("mamba_ssm", "selective_scan"): ("mamba_ssm.ops.selective_scan_interface",
                                      "selective_scan_fn", "mamba-ssm"),
    ("mamba_ssm", "short_conv"): ("causal_conv1d", "causal_conv1d_fn", "causal-conv1d"),
}
SERVES = {b: tuple(op for (kb, op) in _KERNELS if kb == b) for b in BACKENDS[2:]}
_AUTO = {op: tuple(b for b in BACKENDS[2:] if (b, op) in _KERNELS) for op in OPS}

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CHOICE: ContextVar[Mapping[str, str] | None] = ContextVar("seqmem_backends", default=None)


# ---- the choice ----------------------------------------------------------------------------
def _check_backend(what: str, backend) -> str:
    if backend not in BACKENDS:
        raise SeqmemError(f"unknown backend {backend!r} for {what}; accepted: "
                          f"{', '.join(BACKENDS)}")
    return backend


def check_spec(spec: str | Mapping[str, str]) -> dict[str, str]:
    """The spec as {op: backend}: one backend name (for every op; a kernel backend for the ops
    it serves, "torch" for the others) or a mapping op -> backend (only the ops named). An
    unknown op or backend, or a kernel backend named for an op it has no kernel for, raises a
    one-line SeqmemError naming what is accepted."""
    if isinstance(spec, str):
        _check_backend("every op", spec)
        if spec in ("auto", "torch"):
            return dict.fromkeys(OPS, spec)
        return {op: spec if op in SERVES[spec] else "torch" for op in OPS}
    if not isinstance(spec, Mapping):
        raise SeqmemError(f"a backend spec is a backend name or a mapping op -> backend, got "
                          f"{type(spec).__name__}; backends: {', '.join(BACKENDS)}")
    out = {}
    for op, backend in spec.items():
        if op not in OPS:
            raise SeqmemError(f"unknown op {op!r} in a backend spec; ops that dispatch: "
                              f"{', '.join(OPS)}")
        _check_backend(f"op {op}", backend)
        if backend in SERVES and op not in SERVES[backend]:
            raise SeqmemError(f"backend {backend} has no kernel for op {op}; it serves: "
                              f"{', '.join(SERVES[backend])}")
        out[op] = backend
    return out


@contextmanager
def use(spec: str | Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Within the block, the ops named by `spec` (see `check_spec`) run on the backends it
    names; other ops keep the choice made around the block. Yields the choice in force."""
    merged = {**(_CHOICE.get() or {}), **check_spec(spec)}
    token = _CHOICE.set(merged)
    try:
        yield dict(merged)
    finally:
        _CHOICE.reset(token)


def choice(op: str) -> str:
    """The backend chosen now for `op` ("auto" unless `use` said otherwise)."""
    if op not in OPS:
        raise SeqmemError(f"unknown op {op!r}; ops that dispatch: {', '.join(OPS)}")
    return (_CHOICE.get() or {}).get(op, "auto")


# ---- availability --------------------------------------------------------------------------
@cache
def _load(backend: str, op: str) -> tuple[Callable | None, str | None]:
    """The kernel of `op` on `backend` and None, or None and the one-line reason it is not
    usable here. Tried once per process: no import is attempted on a machine without CUDA
    (the kernels' packages import Triton or CUDA extensions)."""
    module, name, package = _KERNELS[backend, op]
    need = f"backend {backend} ({op}) needs CUDA and the package {package}"
    if not torch.cuda.is_available():
        return None, f"{need}: CUDA is not available here; install with pip install 'seqmem[gpu]'"
    try:
        return getattr(importlib.import_module(module), name), None
    except Exception as e:  # an ImportError, or Triton / a CUDA extension failing to load
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        return None, f"{need}: importing {module}.{name} failed ({why}); pip install 'seqmem[gpu]'"


def available(backend: str, op: str | None = None) -> str | None:
    """None if `backend` is usable here (for `op`, or for every op it serves), else the
    one-line reason, naming the package to install."""
    _check_backend("available()", backend)
    if backend in ("auto", "torch"):
        return None
    if op is not None:
        choice(op)  # checks the op's name
        if op not in SERVES[backend]:
            return f"backend {backend} has no kernel for op {op}; it serves: " \
                   f"{', '.join(SERVES[backend])}"
        return _load(backend, op)[1]
    for served in SERVES[backend]:
        reason = _load(backend, served)[1]
        if reason is not None:
            return reason
    return None


# ---- what each kernel supports -------------------------------------------------------------
def _names(dtypes) -> str:
    return ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))


def _dtypes(opts: dict, *, float32: bool = True) -> str | None:
    """Why the dtypes of a call do not suit a kernel: its inputs (opts["inputs"]) share one
    dtype among float32 (unless float32=False), float16, bfloat16; its gates (opts["gates"],
    log decays, beta) may be any of those (float32 gates with bfloat16 inputs under autocast)."""
    accepted = _KERNEL_DTYPES if float32 else _KERNEL_DTYPES[1:]
    dtypes = {x.dtype for x in opts.get("inputs", ()) if x is not None}
    if len(dtypes) != 1 or not dtypes <= set(accepted):
        return f"takes inputs of one dtype among {_names(accepted)}, got {_names(dtypes)}"
    gates = {x.dtype for x in opts.get("gates", ()) if x is not None}
    if not gates <= set(_KERNEL_DTYPES):
        return f"takes gates of dtype {_names(_KERNEL_DTYPES)}, got {_names(gates)}"
    return None


def _unsupported(op: str, mode: str | None, x: Tensor, opts: dict) -> str | None:
    """Why the kernel of `op` cannot run this call (None: it can). x is the op's first input
    (b, t, ...); opts the op's other arguments that decide it."""
    if mode is not None and mode != "chunk":
        return f"runs {op}'s chunk form only, not mode {mode!r} (seqmem's own form)"
    if x.shape[1] == 0:
        return "is not called for a sequence of no tokens"
    if op in ("linear_attention", "retention", "gla", "ssd", "gated_delta_rule"):
        return _dtypes(opts)
    if op == "delta_rule":  # fla 0.6's chunk_delta_rule asserts q is not float32
        return _dtypes(opts, float32=False) or (
            None if x.shape[-1] <= 256 else f"takes d_k <= 256, got {x.shape[-1]}")
    if op == "selective_scan":
        if opts.get("state") is not None:
            return "takes no initial state (mamba-ssm's selective_scan_fn starts from zeros)"
        return _dtypes(opts)
    if op == "short_conv":
        k = opts["weight"].shape[1]
        if not 2 <= k <= 4:
            return f"takes kernel widths 2 to 4, got {k}"
        if x.shape[1] < k - 1:  # the final state would still hold part of the initial one
            return f"is not called for t < kernel width - 1 ({x.shape[1]} < {k - 1})"
        return _dtypes({"inputs": [*opts["inputs"], opts["weight"]]})
    return None


def kernel(op: str, mode: str | None, x: Tensor, **opts) -> Callable | None:
    """The kernel to run this call of `op` with, or None for seqmem's own forms.

    "torch": None. "auto": None unless x is on CUDA, the kernel's package imports and the
    kernel supports the call. "fla" / "mamba_ssm": the kernel, or a one-line SeqmemError
    saying why it cannot run (no CUDA, no package, an unsupported mode, dtype or option).
    opts: `inputs` (the tensors that share the kernel's dtype), `gates`, `state`, `weight`."""
    chosen = (_CHOICE.get() or {}).get(op, "auto")
    if chosen == "torch" or (chosen == "auto" and not x.is_cuda):
        return None  # the cheap path: on CPU "auto" stops here
    if chosen == "auto":
        for backend in _AUTO[op]:
            fn, _ = _load(backend, op)
            if fn is not None and _unsupported(op, mode, x, opts) is None:
                return fn
        return None
    fn, reason = _load(chosen, op)
    if fn is None:
        raise SeqmemError(reason)
    if not x.is_cuda:
        raise SeqmemError(f"backend {chosen} ({op}) runs on CUDA tensors, got {x.device}; use "
                          f"backend 'auto' or 'torch' on this device")
    reason = _unsupported(op, mode, x, opts)
    if reason is not None:
        raise SeqmemError(f"backend {chosen} ({op}) {reason}; use backend 'auto' or 'torch' "
                          f"for this call")
    return fn


# ---- mappings: seqmem's conventions -> the kernels' ----------------------------------------
def _scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def _state_dtype(v: Tensor, state: Tensor | None) -> torch.dtype:
    """The dtype of the final state seqmem's own form returns: v's, promoted with the
    initial state's."""
    return v.dtype if state is None else torch.promote_types(v.dtype, state.dtype)


def _zeros_state(k: Tensor, v: Tensor, state: Tensor | None) -> Tensor:
    """The initial state in float32 (fla's kernels assert it), zeros when None."""
    if state is None:
        return torch.zeros(k.shape[0], k.shape[2], k.shape[-1], v.shape[-1], device=v.device,
                           dtype=torch.float32)
    return state.float()


def fla_simple_gla(chunk_simple_gla: Callable, q: Tensor, k: Tensor, v: Tensor,
                   g: Tensor | None, *, scale: float | None = None,
                   state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t by fla's chunk_simple_gla:
    q, k (b, t, h, d_k), v (b, t, h, d_v), g (b, t, h) log decays or None (no decay), state
    (b, h, d_k, d_v) -> o (b, t, h, d_v), S_T. Linear attention is g = None, retention
    g = log_decay expanded over (b, t)."""
    o, S = chunk_simple_gla(q, k, v, g=g, scale=_scale(q, scale),
                            initial_state=_zeros_state(k, v, state), output_final_state=True)
    return o, S.to(_state_dtype(v, state))


def fla_linear_attention(chunk_simple_gla: Callable, q: Tensor, k: Tensor, v: Tensor, *,
                         scale: float | None = None, state: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Linear attention, S_t = S_{t-1} + k_t^T v_t, by chunk_simple_gla with no gate."""
    return fla_simple_gla(chunk_simple_gla, q, k, v, None, scale=scale, state=state)


def fla_retention(chunk_simple_gla: Callable, q: Tensor, k: Tensor, v: Tensor,
                  log_decay: Tensor, *, scale: float | None = None, state: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Retention, S_t = exp(log_decay) S_{t-1} + k_t^T v_t with log_decay (h,), by
    chunk_simple_gla with the decay as a per-token gate g (b, t, h): fla 0.6 gives no
    gradient to the per-head g_gamma, and the gradient of the expanded g sums to
    log_decay's."""
    g = log_decay.expand(q.shape[0], q.shape[1], q.shape[2])  # (b, t, h)
    return fla_simple_gla(chunk_simple_gla, q, k, v, g, scale=scale, state=state)


def fla_ssd(chunk_simple_gla: Callable, x: Tensor, a: Tensor, B: Tensor, C: Tensor, *,
            state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """ssd's h_t = exp(a_t) h_{t-1} + x_t^T B_t, y_t = h_t C_t by chunk_simple_gla: simple
    GLA with q = C, k = B, v = x, g = a, scale 1, and the state transposed, seqmem's (b, h,
    p, n) being fla's (b, h, d_k = n, d_v = p)."""
    S0 = None if state is None else state.transpose(-1, -2)
    y, S = fla_simple_gla(chunk_simple_gla, C, B, x, a, scale=1.0, state=S0)
    return y, S.transpose(-1, -2).contiguous()


def fla_gla(chunk_gla: Callable, q: Tensor, k: Tensor, v: Tensor, g: Tensor, *,
            scale: float | None = None, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t by fla's chunk_gla:
    g (b, t, h, d_k) log forget gates, the same layout as seqmem's."""
    o, S = chunk_gla(q, k, v, g, scale=_scale(q, scale),
                     initial_state=_zeros_state(k, v, state), output_final_state=True)
    return o, S.to(_state_dtype(v, state))


def fla_delta_rule(chunk_delta_rule: Callable, q: Tensor, k: Tensor, v: Tensor, *,
                   beta: Tensor, scale: float | None = None, state: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """The delta rule by fla's chunk_delta_rule: beta (b, t, h), state (b, h, d_k, d_v)."""
    o, S = chunk_delta_rule(q, k, v, beta=beta, scale=_scale(q, scale),
                            initial_state=_zeros_state(k, v, state), output_final_state=True)
    return o, S.to(_state_dtype(v, state))


def fla_gated_delta_rule(chunk_gated_delta_rule: Callable, q: Tensor, k: Tensor, v: Tensor, *,
                         g: Tensor, beta: Tensor, scale: float | None = None,
                         state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The gated delta rule by fla's chunk_gated_delta_rule: g (log decays) and beta
    (b, t, h) passed by keyword, since fla's positional order is (..., g, beta) in this
    kernel and (..., beta, g) in its reference."""
    o, S = chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=_scale(q, scale),
                                  initial_state=_zeros_state(k, v, state),
                                  output_final_state=True)
    return o, S.to(_state_dtype(v, state))


class _NoGradient(torch.autograd.Function):
    """The identity on a kernel's final state that the kernel gives no gradient for: a
    gradient reaching it raises instead of being dropped."""

    @staticmethod
    def forward(ctx, h: Tensor, why: str) -> Tensor:
        ctx.why = why
        return h.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        raise SeqmemError(ctx.why)


def mamba_selective_scan(selective_scan_fn: Callable, u: Tensor, delta: Tensor, A: Tensor,
                         B: Tensor, C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                         *, delta_bias: Tensor | None = None, delta_softplus: bool = False
                         ) -> tuple[Tensor, Tensor]:
    """Mamba's selective scan from the zero state by mamba-ssm's selective_scan_fn: seqmem's
    u, delta, z (b, t, d), B, C (b, t, n) become the kernel's (b, d, t), (b, n, t); A, D and
    delta_bias go in float32 (the kernel's weight type). Returns y (b, t, d) and h_T (b, d, n)
    in u's dtype; the kernel gives h_T no gradient, so a gradient reaching it raises."""
    def tr(x):
        return None if x is None else x.transpose(1, 2)

    y, h = selective_scan_fn(tr(u), tr(delta), A.float(), tr(B), tr(C),
                             None if D is None else D.float(), tr(z),
                             delta_bias=None if delta_bias is None else delta_bias.float(),
                             delta_softplus=delta_softplus, return_last_state=True)
    why = ("mamba-ssm's selective_scan_fn gives its final state no gradient; use backend "
           "'torch' for selective_scan to backpropagate through the final state")
    return y.transpose(1, 2), _NoGradient.apply(h.to(u.dtype), why)


def causal_conv1d_short_conv(causal_conv1d_fn: Callable, x: Tensor, weight: Tensor,
                             bias: Tensor | None = None, state: Tensor | None = None
                             ) -> tuple[Tensor, Tensor]:
    """The short causal convolution by causal-conv1d's causal_conv1d_fn: seqmem's x (b, t, d)
    transposed is the kernel's channel-last (b, d, t) (stride 1 along d, the layout it needs
    to take and return states), the state (b, k-1, d) transposed its (b, d, k-1); weight
    (d, k) is the same conv1d layout, weight[:, k-1] on the current input."""
    xc = x.contiguous().transpose(1, 2)  # (b, d, t), channel-last
    s0 = None if state is None else state.contiguous().transpose(1, 2)  # (b, d, k-1)
    y, s = causal_conv1d_fn(xc, weight, bias, initial_states=s0, return_final_states=True)
    return y.transpose(1, 2), s.transpose(1, 2)
