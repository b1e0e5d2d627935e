"""Continual-learning metrics from the accuracy (or loss) matrix.

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

Revisited experiences (a `schedule`: the experience s_k trained in session k, k = 0..L-1, as
the `power_law` protocol makes): R is L x T (after session k, tested on experience j), and
with first(j) and last(j) the first and the last session that trains j, the definitions
above become, over the experiences trained at all except the one of the final session:

    BWT = mean_j (R[L-1, j] - R[last(j), j]),   F = mean_j max_{l<L-1} (R[l, j] - R[L-1, j]),
    FWT = mean over j with first(j) > 0 of (R[first(j)-1, j] - b[j]);

with the schedule 0, 1, ..., T-1 they are the definitions above exactly.

Losses (`lower_is_better=True`: a regression protocol's matrix of MSEs M[i, j]): the same
definitions on the score -M, so that the signs read as for accuracy: BWT < 0 is forgetting
(BWT = mean_j (M[last(j), j] - M[L-1, j])), F > 0 is forgetting (F = mean_j (M[L-1, j] -
min_l M[l, j]), the rise of the loss from its lowest), FWT > 0 is helpful transfer (FWT =
mean_j (b[j] - M[first(j)-1, j])). The average and the curve area stay in the loss's own
units: `average_loss` = 1/T sum_j M[L-1, j] and LCA the mean loss over the curves (both:
lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from seqmem.errors import SeqmemError


def _matrix(R, schedule: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or 0 in R.shape:
        raise SeqmemError(f"the score matrix must be 2-D and non-empty, got shape {R.shape}")
    L, T = R.shape
    if schedule is None:
        if L != T:
            raise SeqmemError(f"the accuracy matrix must be square T x T with T >= 1 (or give "
                              f"the schedule of its sessions), got shape {R.shape}")
        return R, list(range(T))
    sched = [int(j) for j in schedule]
    if len(sched) != L or any(not 0 <= j < T for j in sched):
        raise SeqmemError(f"the schedule must name one experience in [0, {T}) per row of the "
                          f"matrix ({L} rows), got {sched}")
    return R, sched


def _scored(R, schedule, lower_is_better: bool) -> tuple[np.ndarray, list[int]]:
    R, sched = _matrix(R, schedule)
    return (-R if lower_is_better else R), sched


def _earlier(sched: list[int]) -> list[int]:
    """The experiences trained in some session, except the one of the final session."""
    return sorted(set(sched) - {sched[-1]})


def average_accuracy(R, schedule: Sequence[int] | None = None) -> float:
    """Mean accuracy over all experiences after the last session."""
    R, _ = _matrix(R, schedule)
    return float(R[-1].mean())


def average_loss(M, schedule: Sequence[int] | None = None) -> float:
    """Mean loss (e.g. MSE) over all experiences after the last session (lower is better)."""
    return average_accuracy(M, schedule)


def backward_transfer(R, schedule: Sequence[int] | None = None, *,
                      lower_is_better: bool = False) -> float:
    """Mean change of each earlier experience's score from just after it was last trained to
    the end (negative: forgetting; for a loss, the score is minus the loss)."""
    S, sched = _scored(R, schedule, lower_is_better)
    js = _earlier(sched)
    if not js:
        return math.nan
    last = {j: k for k, j in enumerate(sched)}
    return float(np.mean([S[-1, j] - S[last[j], j] for j in js]))


def forward_transfer(R, baseline: Sequence[float], schedule: Sequence[int] | None = None, *,
                     lower_is_better: bool = False) -> float:
    """Mean score on each experience just before it is first trained, above the untrained
    model's (for a loss: how much lower the loss is than the untrained model's)."""
    S, sched = _scored(R, schedule, lower_is_better)
    T = S.shape[1]
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (T,):
        raise SeqmemError(f"baseline must hold one accuracy per experience (or loss; {T}), "
                          f"got shape {b.shape}")
    b = -b if lower_is_better else b
    first: dict[int, int] = {}
    for k, j in enumerate(sched):
        first.setdefault(j, k)
    js = [j for j, k in first.items() if k > 0]
    if not js:
        return math.nan
    return float(np.mean([S[first[j] - 1, j] - b[j] for j in js]))


def forgetting(R, schedule: Sequence[int] | None = None, *,
               lower_is_better: bool = False) -> float:
    """Mean over earlier experiences of the drop from their best score to the final one
    (positive: forgetting; for a loss, the rise from its lowest value to the final one)."""
    S, sched = _scored(R, schedule, lower_is_better)
    js = _earlier(sched)
    if not js or S.shape[0] < 2:
        return math.nan
    return float(np.mean([S[:-1, j].max() - S[-1, j] for j in js]))


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
              curves: Sequence[Sequence[float]] | None = None, *,
              schedule: Sequence[int] | None = None, lower_is_better: bool = False) -> dict:
    """All metrics that the inputs allow, as a dict of floats (NaN where undefined): for
    accuracies avg_acc, for losses (`lower_is_better`) avg_loss; bwt, forgetting, fwt, lca
    (see the module docstring for the sign convention of losses)."""
    kw = {"lower_is_better": lower_is_better}
    avg = ("avg_loss", average_loss) if lower_is_better else ("avg_acc", average_accuracy)
    out = {avg[0]: avg[1](R, schedule), "bwt": backward_transfer(R, schedule, **kw),
           "forgetting": forgetting(R, schedule, **kw)}
    if baseline is not None:
        out["fwt"] = forward_transfer(R, baseline, schedule, **kw)
    if curves:
        out["lca"] = learning_curve_area(curves)
    return out
