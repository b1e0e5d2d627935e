"""Generalised teacher forcing in the latent space, with the adaptive alpha (Hess, Monfared,
Brenner & Durstewitz 2023, ICML, "Generalized Teacher Forcing for Learning Chaotic Dynamics").

For a model whose observation is the identity on its first N latent units (x_t = z_t[:N],
`set_identity_observation`), the data-inferred state is z^_t = (x_t, z_t[N:]) and the model
steps from the forced state

    z~_t = alpha z^_t + (1 - alpha) z_t,   i.e.  z~_t[:N] = alpha x_t + (1 - alpha) z_t[:N],
                                                 z~_t[N:] = z_t[N:]

(`force`). The model is autonomous in z: its input at each step is its own read-out of the
forced state, z~_t[:N] (at t = 0 the data x_0), so it free-runs exactly as it is trained at
alpha = 0. The Jacobian of a forced step is the Jacobian J_t of the model's step map at z~
with the forced units' rows scaled by (1 - alpha): with every unit observed, the product over
the forcing interval is bounded by (1 - alpha)^(T-1) prod_t ||J_t||.

Adaptive alpha (the paper's rule): G = (prod_{t=1}^{T-1} ||J_t||_2)^(1/(T-1)), the geometric
mean of the spectral norms of the Jacobians along the data-inferred trajectory (the states
forced with alpha = 1), an upper bound of the growth per step of the Jacobian product; then

    alpha = max(0, 1 - 1/G)

makes (1 - alpha) G <= 1: the bounded product neither explodes (alpha damps it to 1) nor is
damped where it already contracts (G <= 1 gives alpha = 0, free running). seqmem computes G
per sequence and takes the largest alpha of the batch, recomputed at every update (the paper
also smooths alpha over updates; seqmem does not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmem import mixers
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel

FORMS = ("input", "latent")


def latent_mixers() -> list[str]:
    """The registered mixers whose state is the latent z they output (`latent_state`), which
    latent teacher forcing can overwrite."""
    return [n for n in mixers.names() if getattr(mixers.get(n), "latent_state", False)]


def set_identity_observation(model: SequenceModel) -> None:
    """Make the model's regression head the identity observation x = z[:N] of the first N =
    d_output units (weight [I 0], bias 0), fixed (not trained)."""
    if model.regressor is None:
        raise SeqmemError("the identity observation reads out a regression head; this model "
                          "has none (d_output)")
    N, M = model.regressor.out_features, model.regressor.in_features
    if N > M:
        raise SeqmemError(f"the identity observation reads the first {N} latent units (the "
                          f"task's outputs), but the model has d_model={M}; use d_model >= {N}")
    with torch.no_grad():
        model.regressor.weight.zero_()
        model.regressor.weight[:, :N] = torch.eye(N, dtype=model.regressor.weight.dtype)
        model.regressor.bias.zero_()
    model.regressor.requires_grad_(False)


def check_latent(model: SequenceModel) -> None:
    """A SeqmemError unless latent forcing applies to `model`: one plain block of a mixer
    whose state is its latent output (`latent_mixers`), read out by the identity observation."""
    names = latent_mixers()
    blocks = list(model.blocks)
    if (len(blocks) != 1 or blocks[0].kind != "plain"
            or not getattr(blocks[0].mixer, "latent_state", False)):
        got = ", ".join(type(b.mixer).__name__ for b in blocks)
        raise SeqmemError(f"latent teacher forcing needs one plain block of a mixer with an "
                          f"identifiable latent state ({', '.join(names)}); got {got} in "
                          f"{len(blocks)} block(s)")
    r = model.regressor
    if r is None:
        raise SeqmemError("latent teacher forcing needs a regression head (d_output)")
    N = r.out_features
    eye = torch.zeros_like(r.weight)
    eye[:, :N] = torch.eye(N, dtype=r.weight.dtype, device=r.weight.device)
    if not (torch.equal(r.weight, eye) and not bool(r.bias.any())):
        raise SeqmemError("latent teacher forcing needs the identity observation x = z[:N] "
                          "(seqmem.train.gtf.set_identity_observation)")


def force(z: Tensor, x: Tensor, alpha) -> Tensor:
    """The forced state z~ (b, M): alpha x + (1 - alpha) z[:, :N] on the first N units (x is
    (b, N)), z unchanged on the others."""
    N = x.shape[-1]
    return torch.cat([alpha * x + (1 - alpha) * z[:, :N], z[:, N:]], dim=-1)


def latent_gtf_predictions(model: SequenceModel, inputs: Tensor, alpha, state: list
                           ) -> Tensor:
    """The model's predictions (b, t, N) of x_1..x_t under latent generalised teacher forcing
    (see the module docstring): from the initial state and the input x_0, each step
    predicts x^_{k+1} = z_{k+1}[:N]; the state is then forced towards x_{k+1} (`force`) and
    the next input is the forced state's read-out. `alpha` a float, a 0-d tensor, or
    "adaptive" (`adaptive_alpha` of this batch). Gradients flow through the forced states."""
    check_latent(model)
    if isinstance(alpha, str):  # "adaptive" (the config admits no other string)
        alpha = adaptive_alpha(model, inputs, state)
    preds = []
    x = inputs[:, 0]  # (b, N)
    t = inputs.shape[1]
    for k in range(t):
        h, state = model.step(x, state)
        preds.append(model.predict(h))  # (b, N) the prediction of x_{k+1}
        if k + 1 < t:
            z = force(state[0], inputs[:, k + 1], alpha)  # (b, M)
            state = [z]
            x = model.predict(z)  # = z~[:N]
    return torch.stack(preds, dim=1)  # (b, t, N)


def forced_states(model: SequenceModel, inputs: Tensor, alpha, state: list) -> Tensor:
    """The forced states z~_1..z~_{t-1} (b, t - 1, M) of a latent-forcing pass (no gradient)."""
    out = []
    with torch.no_grad():
        x = inputs[:, 0]
        for k in range(inputs.shape[1] - 1):
            _, state = model.step(x, state)
            z = force(state[0], inputs[:, k + 1], alpha)
            out.append(z)
            state = [z]
            x = model.predict(z)
    return torch.stack(out, dim=1) if out else inputs.new_zeros(inputs.shape[0], 0,
                                                                model.d_model)


def step_jacobians(model: SequenceModel, z: Tensor) -> Tensor:
    """Jacobians (n, M, M) of the model's autonomous step map G(z) = the state after one step
    from state z with input z[:N] (its own read-out), at the states z (n, M)."""
    p = next(model.parameters())
    z = z.detach().to(p.dtype).requires_grad_(True)
    with torch.enable_grad():
        _, new = model.step(model.predict(z), [z])
        g = new[0]  # (n, M)
        rows = [torch.autograd.grad(g[:, i].sum(), z, retain_graph=i + 1 < g.shape[1])[0]
                for i in range(g.shape[1])]  # each (n, M): row i of every Jacobian
    return torch.stack(rows, dim=1).detach()  # (n, M, M)


def adaptive_alpha(model: SequenceModel, inputs: Tensor, state: list) -> float:
    """The paper's adaptive alpha for this batch: per sequence, G = the geometric mean of the
    spectral norms of the step Jacobians at the data-inferred states (forced with alpha = 1),
    alpha = max(0, 1 - 1/G); the largest over the batch (0 for sequences of one step)."""
    b, t = inputs.shape[:2]
    if t < 2:
        return 0.0
    Z = forced_states(model, inputs, 1.0, state)  # (b, t - 1, M)
    J = step_jacobians(model, Z.reshape(b * (t - 1), -1))  # (b (t - 1), M, M)
    norms = torch.linalg.matrix_norm(J.double(), ord=2).reshape(b, t - 1)  # (b, t - 1)
    G = norms.clamp_min(1e-300).log().mean(1).exp()  # (b,)
    return float((1 - 1 / G).clamp_min(0).max())
