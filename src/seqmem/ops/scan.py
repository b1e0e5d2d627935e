"""Inclusive prefix scan of an associative operator over time, and the diagonal linear
recurrence computed with it.

    out_t = e_0 (+) e_1 (+) ... (+) e_t        for an associative (+)

computed by the Hillis-Steele scheme (Hillis & Steele 1986): ceil(log2 t) rounds, round r
combining every element with the one 2^r steps earlier. It needs no identity element, works on
any tuple of tensors that share the time axis, and is differentiable by autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from seqmem.ops.loops import float32_recurrence

Elems = tuple[Tensor, ...]


@float32_recurrence
def associative_scan(combine: Callable[[Elems, Elems], Elems], elems: Elems, dim: int = 1
                     ) -> Elems:
    """All inclusive prefixes of `elems` along `dim` under `combine(earlier, later)`."""
    n = elems[0].shape[dim]
    shift = 1
    while shift < n:
        earlier = tuple(e.narrow(dim, 0, n - shift) for e in elems)
        later = tuple(e.narrow(dim, shift, n - shift) for e in elems)
        merged = combine(earlier, later)
        elems = tuple(
            torch.cat([e.narrow(dim, 0, shift), m], dim=dim) for e, m in zip(elems, merged,
                                                                             strict=True)
        )
        shift *= 2
    return elems


@float32_recurrence
def linear_recurrence_step(a_t: Tensor, b_t: Tensor, h: Tensor) -> Tensor:
    """One step of h_t = a_t * h_{t-1} + b_t (elementwise): the specification."""
    return a_t * h + b_t


@float32_recurrence
def linear_recurrence(a: Tensor, b: Tensor, h0: Tensor, dim: int = 1) -> Tensor:
    """Every h_t of h_t = a_t * h_{t-1} + b_t from h0, by a prefix scan over `dim`.

    a, b (b, t, ...); h0 (b, ...) -> h (b, t, ...). The pairs (a, b) compose as affine maps:
    (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2).
    """
    def combine(x: Elems, y: Elems) -> Elems:
        return x[0] * y[0], y[0] * x[1] + y[1]

    prod, acc = associative_scan(combine, (a, b), dim=dim)
    return prod * h0.unsqueeze(dim) + acc
