"""Probing a trained model: accuracy on the stream, ablation, perturbation, forgetting.

Definitions follow Khajehabdollahi et al. (ICLR 2024) and the authors' analysis code:

- accuracy is measured on the streaming task (one long Bernoulli(0.5) stream, a read-out at
  every step after a burn-in), for the head that reads out a given N;
- ablation silences units: their activity is held at zero at every step, so they influence
  neither the recurrence nor the read-out;
- perturbation adds noise of relative size eps (Li et al. 2020, eq. 5): to the recurrent
  weights W += eps ||W||_F D / ||D||_F with D ~ N(0, 1); to the timescales
  tau += eps ||tau|| |D| / ||D|| (only longer, as the authors' "normalized tau abs");
- the forgetting matrix holds the accuracy on every N after each curriculum step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from seqmem import tasks
from seqmem.build import build_curriculum, build_model
from seqmem.config import RunConfig
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.store import Run


def _leaves(state):
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, tuple | list):
        return [t for s in state for t in _leaves(s)]
    raise SeqmemError(f"cannot silence units of a state of type {type(state).__name__}")


def _mask_state(state, keep: Tensor, d: int):
    if isinstance(state, Tensor):
        return state * keep if state.shape[-1] == d else state
    return type(state)(*(_mask_state(s, keep, d) for s in state)) if hasattr(state, "_fields") \
        else type(state)(_mask_state(s, keep, d) for s in state)


@torch.no_grad()
def features_silenced(model: SequenceModel, x: Tensor, units, *, generator=None) -> Tensor:
    """Features of the last block (b, t, d) with `units` of the last block held at zero.

    The model is stepped; after every step the silenced units' entries of the last block's
    output and state (every state tensor whose last dimension is d_model) are set to zero.
    """
    d = model.d_model
    keep = torch.ones(d, dtype=x.dtype, device=x.device)  # (d,)
    idx = torch.as_tensor(list(units), dtype=torch.long, device=x.device)
    if idx.numel() and (idx.min() < 0 or idx.max() >= d):
        raise SeqmemError(f"units must lie in [0, {d}), got {idx.tolist()}")
    keep[idx] = 0
    state = model.init_state(x.shape[0], dtype=x.dtype, generator=generator)
    state[-1] = _mask_state(state[-1], keep, d)
    hs = []
    for t in range(x.shape[1]):
        h = model.encoder(x[:, t])
        for i, blk in enumerate(model.blocks):
            h, s = blk.step(h, state[i])
            if i == len(model.blocks) - 1:
                h = h * keep
                s = _mask_state(s, keep, d)
            state[i] = s
        hs.append(h)
    return torch.stack(hs, dim=1)


@torch.no_grad()
def stream_accuracy(model: SequenceModel, task: str, N: list[int], heads: list[int], *,
                    generator: torch.Generator, n_trials: int = 8, stream_len: int = 1100,
                    burn_in: int = 100, silence=()) -> np.ndarray:
    """Accuracy per head on the streaming variant of `task` (n_parity or n_dms).

    `heads[j]` is the model head that reads out `N[j]`. With `silence`, those units of the
    last block are held at zero (see `features_silenced`). Returns (len(N),) accuracies.
    """
    if len(N) != len(heads):
        raise SeqmemError(f"N and heads must pair up, got {len(N)} N and {len(heads)} heads")
    t = tasks.build(task, N=list(N), streaming=True, stream_len=stream_len, burn_in=burn_in)
    batch = t.sample(n_trials, generator=generator)
    p = next(model.parameters())
    x = batch.inputs.to(device=p.device, dtype=p.dtype)  # (b, t, d_input)
    if len(silence):
        h = features_silenced(model, x, silence, generator=generator)
    else:
        h, _ = model.features(x, model.init_state(n_trials, dtype=x.dtype, generator=generator))
    m = batch.mask.to(p.device)  # (b, t)
    targets = batch.targets.to(p.device)[m]  # (n, len(N))
    accs = []
    for j, i in enumerate(heads):
        pred = model.heads[i](h[m]).argmax(-1)  # (n,)
        accs.append((pred == targets[:, j]).double().mean().item())
    return np.array(accs)


#: The recurrent weights perturbed as "W", by mixer attribute: the leaky RNN's W, the
#: torch-like RNNs' weight_hh (every gate of a GRU or an LSTM stacked).
RECURRENT_WEIGHTS = ("W", "weight_hh")


def perturbable(mixer, what: str) -> str | None:
    """The name of the parameter of `mixer` that perturbation `what` ("W" or "tau") changes,
    or None if the mixer has none."""
    if what == "W":
        return next((n for n in RECURRENT_WEIGHTS
                     if isinstance(getattr(mixer, n, None), torch.nn.Parameter)), None)
    if what == "tau":
        return "tau" if isinstance(getattr(mixer, "tau", None), torch.nn.Parameter) else None
    raise SeqmemError(f"unknown perturbation {what!r}; accepted: W, tau")


def perturbed(model: SequenceModel, what: str, eps: float, *, generator: torch.Generator
              ) -> SequenceModel:
    """A copy of `model` with its last block's recurrent weights W or its tau perturbed.

    what="W": W += eps ||W||_F D / ||D||_F, D ~ N(0, 1) (Li et al. 2020, eq. 5), W the leaky
    RNN's W or a GRU's / LSTM's weight_hh (all gates); what="tau": tau += eps ||tau|| |D| / ||D||,
    D ~ N(0, 1). eps = 0 returns an exact copy.
    """
    if eps < 0:
        raise SeqmemError(f"eps must be >= 0, got {eps}")
    mixer = model.blocks[-1].mixer
    name = perturbable(mixer, what)
    if name is None:
        raise SeqmemError(f"mixer {mixer.name!r} has no parameter to perturb as {what!r} "
                          f"(W: a recurrent weight {' or '.join(RECURRENT_WEIGHTS)}; tau: a "
                          f"parameter tau)")
    out = copy.deepcopy(model)
    omix = out.blocks[-1].mixer
    p = getattr(omix, name)
    with torch.no_grad():
        # drawn on the CPU, where the generator is, then moved to the parameter
        D = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        if what == "tau":
            D = D.abs()
        # the norm of W as used (diagonal zeroed where the mixer zeroes it)
        ref = omix.recurrent_weight() if name == "W" and hasattr(omix, "recurrent_weight") \
            else p
        if eps > 0:
            p += eps * torch.linalg.norm(ref) / torch.linalg.norm(D) * D
    return out


def stage_checkpoints(run: Run) -> list[int]:
    """The N solved at each curriculum step of a run, from its checkpoints N<k>."""
    out = []
    for tag in run.checkpoints():
        if len(tag) == 4 and tag[0] == "N" and tag[1:].isdigit():
            out.append(int(tag[1:]))
    return sorted(out)


def load_stage(cfg: RunConfig, run: Run, N: int, *,
               device: torch.device | str = "cpu") -> SequenceModel:
    """The model of `run` as saved when it solved N (checkpoint N<k>), in eval mode, on
    `device` (the probes built for it follow its parameters)."""
    model = build_model(cfg, build_curriculum(cfg))
    model.load_state_dict(run.load_checkpoint(f"N{N:03d}")["model"])
    return model.to(device).eval()


def head_for(cfg: RunConfig, N: int) -> int:
    """The model head that reads out N under the run's curriculum."""
    return 0 if cfg.curriculum_kind() == "single" else N - cfg.curriculum.n_start


def forgetting_matrix(cfg: RunConfig, run: Run, *, generator: torch.Generator, n_trials: int = 4,
                      stream_len: int = 1100, burn_in: int = 100,
                      device: torch.device | str = "cpu") -> dict:
    """Accuracy on every solved N after each curriculum step: R[i, j] = acc on N_j after N_i.

    Single-head: the one head is tested on every N_j (earlier N_j measure forgetting, later
    ones generalisation). Multi-head: the head of N_j, defined only for N_j <= N_i (NaN
    otherwise). Accuracy is on the streaming task.
    """
    Ns = stage_checkpoints(run)
    single = cfg.curriculum_kind() == "single"
    R = np.full((len(Ns), len(Ns)), np.nan)
    for i, n_i in enumerate(Ns):
        model = load_stage(cfg, run, n_i, device=device)
        cols = [j for j, n_j in enumerate(Ns) if single or n_j <= n_i]
        acc = stream_accuracy(model, cfg.task.kind, [Ns[j] for j in cols],
                              [head_for(cfg, Ns[j]) for j in cols], generator=generator,
                              n_trials=n_trials, stream_len=stream_len, burn_in=burn_in)
        R[i, cols] = acc
    return {"N": Ns, "R": R}
