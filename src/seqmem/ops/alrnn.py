"""The almost-linear RNN (AL-RNN; Brenner, Hemmer, Monfared & Durstewitz 2024, "Almost-Linear
RNNs Yield Highly Interpretable Symbolic Codes in Dynamical Systems Reconstruction", NeurIPS):

    z_t = A z_{t-1} + W Phi*(z_{t-1}) + h + u_t,   Phi*(z) = (z_1, ..., z_{M-P},
                                                            max(0, z_{M-P+1}), ..., max(0, z_M))

A diagonal, W (M x M), h a bias, u_t = C s_t the input drive; only the last P of the M units
pass through a ReLU, so the map is linear within each of the 2^P subregions that the signs of
those P units define (`alrnn_subregion` gives the subregion as an integer symbol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem.ops.loops import float32_recurrence, step_loop


def alrnn_phi(z: Tensor, n_relu: int) -> Tensor:
    """Phi*(z): z (..., M) with a ReLU on its last `n_relu` units only."""
    M = z.shape[-1]
    return torch.cat([z[..., : M - n_relu], torch.relu(z[..., M - n_relu:])], dim=-1)


@float32_recurrence
def alrnn_step(u_t: Tensor, z: Tensor, A: Tensor, W: Tensor, h: Tensor, n_relu: int) -> Tensor:
    """One AL-RNN step z_t = A z_{t-1} + W Phi*(z_{t-1}) + h + u_t: u_t, z (b, M) (u_t = C s_t
    already applied), A (M,) the diagonal, W (M, M), h (M,), n_relu = P."""
    return A * z + F.linear(alrnn_phi(z, n_relu), W, h) + u_t


@float32_recurrence
def alrnn_recurrent(u: Tensor, z: Tensor, A: Tensor, W: Tensor, h: Tensor, n_relu: int
                    ) -> tuple[Tensor, Tensor]:
    """Loop of `alrnn_step` over u (b, t, M). Returns (z_all (b, t, M), z_final (b, M))."""
    def step(u_t, z):
        z = alrnn_step(u_t, z, A, W, h, n_relu)
        return z, z  # the output is the state

    return step_loop(step, (u,), z)


def alrnn_subregion(z: Tensor, n_relu: int) -> Tensor:
    """The linear subregion of states z (..., M): the sign pattern of the last `n_relu` units
    as an integer, sum_i [z_{M-P+i} > 0] 2^i (i = 0..P-1; unit M-P+i is bit i), long (...)."""
    if n_relu > 62:
        raise ValueError(f"subregion symbols are 64-bit integers: n_relu must be <= 62, got "
                         f"{n_relu}")
    bits = (z[..., z.shape[-1] - n_relu:] > 0).long()  # (..., P)
    weights = 2 ** torch.arange(n_relu, device=z.device)  # (P,)
    return (bits * weights).sum(-1)
