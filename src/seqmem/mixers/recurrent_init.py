"""Initialisations of an RNN's recurrent weights: scale, structure and rank.

The options `init`, `init_gain`, `init_rank` and `init_noise` of `leaky_rnn`, `elman`, `gru`
and `lstm` set the initial recurrent matrix W (d x d; a gated RNN's W_hh stacks one d x d
block per gate, and each block is drawn on its own):

- `init="default"`: the mixer's own draw, U(-1/sqrt(d), 1/sqrt(d)) (torch.nn's), multiplied
  by `init_gain` g (entries of standard deviation g / sqrt(3 d));
- `init="normal"`: W ~ N(0, g^2 / d), the random connectivity of rich/lazy studies (a gain g
  below / above 1 is the classic rich / lazy knob);
- `init="orthogonal"`: W = g Q with Q Haar-distributed orthogonal, so W W^T = g^2 I;
- `init_rank=r`: W = g (L + init_noise * N), with L = sum_{k<r} u_k v_k^T (u_k, v_k ~ N(0, I))
  rescaled to ||L||_F = sqrt(d), the expected Frobenius norm of a N(0, 1/d) matrix, and N ~
  N(0, 1/d) full-rank noise. Liu et al. 2023 ("How connectivity structure shapes rich and
  lazy learning in neural circuits") compare initial connectivities of different rank at
  one weight magnitude, so that rank and scale are separate knobs: at init_noise = 0 a rank-r
  W has the Frobenius norm that `init="normal"` has in expectation at the same gain.

The defaults (default, 1, None, 0) draw nothing and change nothing: a mixer built with them
has exactly the parameters it had before these options existed. Every other choice draws W
from a generator of its own, seeded by one draw of torch's global generator inside
`torch.random.fork_rng`, so the global stream, and with it every other parameter of the
model (input weights, biases, tau, encoder, heads), is the same as under the default init:
two runs that differ only in these options differ only in W.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice

INITS = ("default", "normal", "orthogonal")
# every draw: float64 on the CPU (a CPU generator's device), whatever the default device
DRAW = {"dtype": torch.float64, "device": "cpu"}


def check_init(mixer: str, d: int, init: str, init_gain: float, init_rank: int | None,
               init_noise: float) -> dict:
    """The init options of `init_recurrent_`, checked, as a dict: a one-line SeqmemError
    names the option that is wrong and what it accepts."""
    init = check_choice(f"{mixer} init", init, INITS)
    if isinstance(init_gain, bool) or not isinstance(init_gain, int | float) \
            or not (0 < init_gain < math.inf):
        raise SeqmemError(f"{mixer} init_gain must be a number > 0, got {init_gain!r}")
    if init_rank is not None:
        if isinstance(init_rank, bool) or not isinstance(init_rank, int) \
                or not 1 <= init_rank <= d:
            raise SeqmemError(f"{mixer} init_rank must be an integer from 1 to d_model={d} "
                              f"(or None: full rank), got {init_rank!r}")
        if init != "default":
            raise SeqmemError(f"{mixer} init_rank draws its own low-rank W: leave init at "
                              f"'default' (got init={init!r}), or drop init_rank")
    if isinstance(init_noise, bool) or not isinstance(init_noise, int | float) \
            or not (0 <= init_noise < math.inf):
        raise SeqmemError(f"{mixer} init_noise must be a number >= 0, got {init_noise!r}")
    if init_noise and init_rank is None:
        raise SeqmemError(f"{mixer} init_noise is the full-rank noise added to a low-rank W: "
                          f"give init_rank too, or init_noise=0")
    return {"init": init, "init_gain": float(init_gain), "init_rank": init_rank,
            "init_noise": float(init_noise)}


def orthogonal(d: int, generator: torch.Generator) -> Tensor:
    """A Haar-distributed d x d orthogonal matrix: Q of the QR decomposition of a standard
    normal matrix, its columns' signs fixed by R's diagonal (Mezzadri 2007)."""
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=generator, **DRAW))
    return Q * torch.sign(torch.diagonal(R))  # (d, d)


def low_rank(d: int, rank: int, noise: float, generator: torch.Generator) -> Tensor:
    """sqrt(d) L / ||L||_F with L = sum of `rank` outer products u v^T of N(0, I) vectors,
    plus `noise` times a N(0, 1/d) matrix (see the module docstring)."""
    u = torch.randn(d, rank, generator=generator, **DRAW)  # (d, r)
    v = torch.randn(rank, d, generator=generator, **DRAW)  # (r, d)
    L = u @ v  # (d, d), rank r
    W = L * (math.sqrt(d) / torch.linalg.matrix_norm(L))
    if noise:
        W = W + noise * torch.randn(d, d, generator=generator, **DRAW) / math.sqrt(d)
    return W


@torch.no_grad()
def init_recurrent_(W: Tensor, *, init: str = "default", init_gain: float = 1.0,
                    init_rank: int | None = None, init_noise: float = 0.0) -> Tensor:
    """Set the recurrent weights W (n_blocks d x d blocks stacked on dim 0) in place, as the
    module docstring says; the defaults leave W as it is. Returns W."""
    d = W.shape[1]
    if W.shape[0] % d:
        raise SeqmemError(f"a recurrent weight stacks d x d blocks: got shape {tuple(W.shape)}")
    if init == "default" and init_rank is None:
        if init_gain != 1.0:
            W.mul_(init_gain)
        return W
    if W.is_meta:  # a model built for its shapes only (e.g. the memory check): nothing to draw
        return W
    with torch.random.fork_rng(devices=[]):  # the global stream is left as it was
        seed = int(torch.randint(0, 2**62, (1,), device="cpu"))
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(W.shape[0] // d):
        if init_rank is not None:
            blocks.append(low_rank(d, init_rank, init_noise, gen))
        elif init == "orthogonal":
            blocks.append(orthogonal(d, gen))
        else:  # normal
            blocks.append(torch.randn(d, d, generator=gen, **DRAW) / math.sqrt(d))
    W.copy_(init_gain * torch.cat(blocks, dim=0))
    return W
