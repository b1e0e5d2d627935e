"""NeuroGym environments as seqmem tasks (Molano-Mazon et al. 2022, "NeuroGym: An open
resource for developing and sharing neuroscience tasks"; package `neurogym`).

A NeuroGym environment generates trials of a cognitive task: an observation per time step
(`env.ob`, (T, ob_dim)) and the ground-truth action per step (`env.gt`, (T,)), the data its
supervised-learning `Dataset` trains on. seqmem samples whole trials from the environment
with its random state seeded from the task's generator. Needs the optional extra:
pip install 'seqmem[neurogym]'.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from seqmem.errors import SeqmemError, check_choice
from seqmem.tasks.base import Batch, Task, check_sample_args, register

MASKS = ("all", "decision")
INSTALL = "pip install 'seqmem[neurogym]'"


def _neurogym_env_ids() -> list[str]:
    import gymnasium as gym
    import neurogym  # noqa: F401  (registers its environments with gymnasium)

    return sorted(k for k, s in gym.registry.items()
                  if isinstance(s.entry_point, str) and s.entry_point.startswith("neurogym"))


def make_env(env: str, env_kwargs: dict | None = None):
    """The NeuroGym environment `env` built directly from its gymnasium registration (no
    gymnasium wrappers: seqmem only calls `new_trial`), with `env_kwargs` (e.g. dt, timing)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    ids = _neurogym_env_ids()
    if env not in ids:
        raise SeqmemError(f"unknown NeuroGym environment {env!r}; accepted: {', '.join(ids)}")
    spec = gym.spec(env)
    try:
        return load_env_creator(spec.entry_point)(**{**spec.kwargs, **(env_kwargs or {})})
    except TypeError as e:
        raise SeqmemError(f"env_kwargs {env_kwargs!r} not accepted by {env}: "
                          f"{str(e).splitlines()[0]}") from None


@register("neurogym")
class NeuroGym(Task):
    """A NeuroGym environment (e.g. DelayMatchSample-v0): observations in, actions out.

    Each example is one trial of the environment `env` (built with `env_kwargs`, e.g.
    {"dt": 100}): inputs its observations (b, t, ob_dim) float32, targets its ground-truth
    actions (b, t, 1) as class ids (one head of `action_space.n` classes). Trials of one batch
    may differ in length (random timing): they are padded at the end with zero inputs and
    mask False to the longest. mask="all" supervises every step of a trial (fixation
    included: NeuroGym's `Dataset` convention); mask="decision" only the steps of the
    environment's "decision" period.

    Randomness: before a batch the environment is reseeded (`env.seed`) with an integer
    drawn from the task's generator, so a generator's seed fixes the batches. Trials are made
    one at a time by the environment (a Python loop over the batch, unavoidable here).
    meta: {"seq_len", "env", "length": (b,) steps of each trial}.
    Needs the optional extra: pip install 'seqmem[neurogym]'.

    Args:
        env: the NeuroGym environment id, e.g. DelayMatchSample-v0.
        env_kwargs: keyword arguments of the environment, e.g. {"dt": 100}.
        mask: "all" (every step) or "decision" (the decision period only) is supervised.
    """

    def __init__(self, *, env: str = "PerceptualDecisionMaking-v0",
                 env_kwargs: dict | None = None, mask: str = "all"):
        if (importlib.util.find_spec("neurogym") is None
                or importlib.util.find_spec("gymnasium") is None):
            raise SeqmemError(f"the neurogym task needs the neurogym package, which is not "
                              f"installed: {INSTALL}")
        if not isinstance(env, str):
            raise SeqmemError(f"env must be a NeuroGym environment id, got {env!r}")
        if env_kwargs is not None and not isinstance(env_kwargs, dict):
            raise SeqmemError(f"env_kwargs must be a mapping or null, got {env_kwargs!r}")
        self.env, self.env_kwargs = env, env_kwargs
        self.mask = check_choice("mask", mask, MASKS)
        self._env = make_env(env, env_kwargs)  # builds only; no trial is drawn
        space = self._env.action_space
        if not hasattr(space, "n"):
            raise SeqmemError(f"{env} has a continuous action space; accepted: environments "
                              f"with discrete actions")
        if mask == "decision" and "decision" not in self._env.timing:
            raise SeqmemError(f"{env} has no 'decision' period (periods: "
                              f"{', '.join(self._env.timing)}); use mask='all'")
        self.d_input = int(np.prod(self._env.observation_space.shape))
        self.heads = [int(space.n)]
        self.classes = self._action_names(space)

    @staticmethod
    def _action_names(space) -> list[str]:
        names = [str(k) for k in range(int(space.n))]
        for label, idx in (getattr(space, "name", None) or {}).items():
            for j, k in enumerate(np.atleast_1d(idx).tolist()):
                names[int(k)] = label if np.ndim(idx) == 0 else f"{label}{j}"
        return names

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """batch_size trials of the environment, padded to the longest."""
        check_sample_args(self, batch_size, generator)
        env = self._env
        env.seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        obs, gts, sup = [], [], []
        for _ in range(batch_size):
            env.new_trial()
            ob = np.asarray(env.ob, dtype=np.float32).reshape(len(env.ob), -1)  # (T, ob_dim)
            obs.append(ob)
            gts.append(np.asarray(env.gt, dtype=np.int64).reshape(len(ob)))
            keep = np.ones(len(ob), dtype=bool)
            if self.mask == "decision":
                keep[:] = False
                keep[env.start_ind["decision"]:env.end_ind["decision"]] = True
            sup.append(keep)
        length = torch.tensor([len(o) for o in obs])
        t = int(length.max())
        inputs = torch.zeros(batch_size, t, self.d_input)  # (b, t, ob_dim)
        targets = torch.zeros(batch_size, t, 1, dtype=torch.long)  # (b, t, 1)
        mask = torch.zeros(batch_size, t, dtype=torch.bool)  # (b, t)
        for i, (ob, gt, keep) in enumerate(zip(obs, gts, sup, strict=True)):
            n = len(ob)
            inputs[i, :n] = torch.from_numpy(ob)
            mask[i, :n] = torch.from_numpy(keep)
            targets[i, :n, 0] = torch.from_numpy(gt) * mask[i, :n]
        return Batch(inputs, targets, mask, {"seq_len": t, "env": self.env, "length": length})
