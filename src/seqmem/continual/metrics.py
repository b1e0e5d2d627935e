"""Continual-learning metrics from the accuracy matrix.

R[i, j] is the accuracy on experience j after training on experiences 0..i (T x T); b[j] the
accuracy on experience j of the model before any training. With T experiences:

    average accuracy   ACC = 1/T sum_j R[T-1, j]                    (Lopez-Paz & Ranzato 2017)
    backward transfer  BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])        (same; < 0 is
                       forgetting)
    forward transfer   FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b[j])              (same)
    forgetting         F   = 1/(T-1) sum_{j<T-1} max_{l<T-1} (R[l, j] - R[T-1, j])
                                                               (Chaudhry et al. 2018, RWalk)
    learning curve area LCA_beta = 1/(beta+1) sum_{k=0}^{beta} Z_k,
                       Z_k = 1/T sum_j a_j[k], a_j[k] the accuracy on experience j after k
                       evaluation intervals of training on it (Chaudhry et al. 2019, A-GEM,
                       where the interval is one mini-batch; seqmem's is `curve_every` steps).

BWT, FWT and F need T >= 2 and are NaN for a single experience.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from seqmem.errors import SeqmemError


def _matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise SeqmemError(f"the accuracy matrix must be square T x T with T >= 1, got shape "
                          f"{R.shape}")
    return R


def average_accuracy(R) -> float:
    """Mean accuracy over all experiences after the last one."""
    R = _matrix(R)
    return float(R[-1].mean())


def backward_transfer(R) -> float:
    """Mean change of each earlier experience's accuracy from just after learning it to the
    end (negative: forgetting)."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return math.nan
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R, baseline: Sequence[float]) -> float:
    """Mean accuracy on each experience just before learning it, above the untrained model's."""
    R = _matrix(R)
    T = R.shape[0]
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (T,):
        raise SeqmemError(f"baseline must hold one accuracy per experience ({T}), got shape "
                          f"{b.shape}")
    if T < 2:
        return math.nan
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R) -> float:
    """Mean over earlier experiences of the drop from their best accuracy to the final one."""
    R = _matrix(R)
    T = R.shape[0]
    if T < 2:
        return math.nan
    return float(np.mean([R[: T - 1, j].max() - R[-1, j] for j in range(T - 1)]))


def learning_curve_area(curves: Sequence[Sequence[float]], beta: int | None = None) -> float:
    """LCA_beta from one learning curve per experience (accuracy on the experience at the
    start of its training and after each evaluation interval); beta defaults to the shortest
    curve's last index."""
    if not curves or any(len(c) == 0 for c in curves):
        raise SeqmemError("learning_curve_area needs one non-empty curve per experience")
    shortest = min(len(c) for c in curves) - 1
    beta = shortest if beta is None else beta
    if not 0 <= beta <= shortest:
        raise SeqmemError(f"beta must be in [0, {shortest}] for these curves, got {beta}")
    Z = np.mean([np.asarray(c[: beta + 1], dtype=np.float64) for c in curves], axis=0)
    return float(Z.mean())


def summarize(R, baseline: Sequence[float] | None = None,
              curves: Sequence[Sequence[float]] | None = None) -> dict:
    """All metrics that the inputs allow, as a dict of floats (NaN where undefined)."""
    out = {"avg_acc": average_accuracy(R), "bwt": backward_transfer(R),
           "forgetting": forgetting(R)}
    if baseline is not None:
        out["fwt"] = forward_transfer(R, baseline)
    if curves:
        out["lca"] = learning_curve_area(curves)
    return out
