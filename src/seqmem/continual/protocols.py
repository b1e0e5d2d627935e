"""The registered continual-learning protocols: sequences of experiences, each a task to train
on and a task to evaluate on, with the read-out head it uses, in the "task" or "domain" setting
(see `seqmem.continual.base` for the contract and the settings).

Protocols (`PROTOCOLS`, in registration order):

- `n_curriculum`: the N-curriculum of the flagship paper, N-parity or N-DMS with N = n_min, ...,
  n_max, one experience per N. Task-incremental is the multi-head read-out; domain-incremental
  the single-head one (Khajehabdollahi et al. 2024).
- `split`: a classification task's classes in pairs (0/1, 2/3, ...), each pair an experience
  with labels 0 and 1 ("split MNIST", Zenke et al. 2017), on any task with `fixed_data = True`
  (a fixed labelled data set: mnist1d, seq_digits).
- `permuted`: the same classification task with the time steps of every input sequence
  permuted by a fixed random permutation per experience, the first the identity ("permuted
  MNIST", Goodfellow et al. 2013, read as sequences); one shared label space; on the same
  tasks as `split`.
- `tasks`: any list of task configs [{"task": name, **options}, ...] (their inputs must be of
  one kind: all token ids or all real-valued; all classification or all regression tasks).
- `dynamics`: next-step forecasting (regression, MSE) of the `dynamics` task, one experience
  per system or parameter regime (e.g. lorenz63 then roessler, or one system at several
  sampling steps dt).
- `power_law`: another protocol's experiences, each revisited after power-law gaps
  (`seqmem.continual.power_law`).

A new protocol is a function `(setting=<default>, *, **options) -> Protocol` registered with
`@register_protocol("name")`, in this module or in one imported here.
"""

from __future__ import annotations

import torch

from seqmem import tasks
from seqmem.continual.base import (
    SETTINGS,
    Experience,
    Protocol,
    build_protocol,
    protocol_names,
    register_protocol,
)
from seqmem.errors import SeqmemError, check_choice, check_int
from seqmem.tasks.base import Batch, Task, check_sample_args


def fixed_data_tasks() -> list[str]:
    """The registered tasks that are fixed labelled data sets (class attribute
    `fixed_data = True`): those `split` and `permuted` accept."""
    return [n for n in tasks.names() if tasks.get(n).fixed_data]


# ---- wrappers: a class subset, a time permutation ---------------------------------------------
class SplitTask(Task):
    """The examples of a fixed-data classification task whose class is in `classes`, labelled
    by the class's position in `classes` (0, 1, ...)."""

    def __init__(self, base: Task, classes: list[int]):
        if not base.fixed_data:
            raise SeqmemError(f"split needs a fixed-data classification task; accepted: "
                              f"{', '.join(fixed_data_tasks())}")
        self.base, self.classes = base, list(classes)
        self.name = f"{base.name}[{','.join(map(str, self.classes))}]"
        self.d_input, self.heads, self.vocab = base.d_input, [len(self.classes)], None
        x, y = base._data()  # (n, t, d), (n,)
        keep = torch.isin(y, torch.tensor(self.classes))  # (n,)
        self._x = x[keep]
        relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
        relabel[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        self._y = relabel[y[keep]]  # (n_keep,)

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        check_sample_args(self, batch_size, generator)
        index = torch.randint(0, len(self._y), (batch_size,), generator=generator)  # (b,)
        inputs = self._x[index]  # (b, t, d)
        t = inputs.shape[1]
        targets = torch.zeros(batch_size, t, 1, dtype=torch.long,
                              device=inputs.device)  # (b, t, 1)
        targets[:, -1, 0] = self._y[index]
        mask = torch.zeros(batch_size, t, dtype=torch.bool, device=inputs.device)  # (b, t)
        mask[:, -1] = True
        return Batch(inputs, targets, mask, {"seq_len": t, "classes": self.classes})


class PermutedTask(Task):
    """A task whose input sequences are read in a fixed permuted order of time steps. Only for
    tasks labelled at the last step alone (the label is a property of the whole sequence)."""

    def __init__(self, base: Task, perm: torch.Tensor):
        self.base, self.perm = base, perm
        self.name = f"{base.name}[perm]"
        self.d_input, self.heads, self.vocab = base.d_input, list(base.heads), base.vocab

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        batch = self.base.sample(batch_size, generator=generator)
        t = batch.mask.shape[1]
        if t != len(self.perm) or bool(batch.mask[:, :-1].any()):
            raise SeqmemError(f"permuted needs a task of fixed length {len(self.perm)} labelled "
                              f"at the last step only; accepted: "
                              f"{', '.join(fixed_data_tasks())}")
        batch.inputs = batch.inputs[:, self.perm]  # (b, t, d)
        return batch


# ---- builders ---------------------------------------------------------------------------------
def _n_classes(task: Task) -> int:
    """Classes of a classification task's one head, or the output channels of a regression
    task (`loss = "mse"`)."""
    if _loss(task) == "mse":
        return task.d_output
    if len(task.heads) != 1:
        raise SeqmemError(f"a continual experience reads one head; task {task.name!r} has "
                          f"{len(task.heads)} (for the N-curriculum use protocol n_curriculum)")
    return task.heads[0]


def _loss(task: Task) -> str:
    return getattr(task, "loss", "ce")


def n_tasks() -> list[str]:
    """The registered tasks with a memory length N (an `N` option), which n_curriculum grows."""
    return [n for n in tasks.names() if "N" in tasks.hyperparameters(tasks.get(n))]


@register_protocol("n_curriculum")
def n_curriculum(setting: str = "task", *, task: str = "n_parity", n_min: int = 2,
                 n_max: int = 6) -> Protocol:
    """One experience per N in n_min..n_max of a task with a memory length N (N-parity or
    N-DMS: labels at the last step of training-style sequences, as the flagship trains)."""
    check_choice("n_curriculum task", task, n_tasks())
    if not (isinstance(n_min, int) and isinstance(n_max, int) and 2 <= n_min <= n_max):
        raise SeqmemError(f"n_curriculum needs integers 2 <= n_min <= n_max, got n_min={n_min!r}"
                          f", n_max={n_max!r}")
    exps = []
    for i, N in enumerate(range(n_min, n_max + 1)):
        t = tasks.build(task, N=N)
        exps.append(Experience(f"N={N}", t, t, t.heads[0], i if setting == "task" else 0))
    return Protocol(f"{task}_curriculum", setting, exps, 1, None)


@register_protocol("split")
def split(setting: str = "task", *, task: str = "mnist1d", n_experiences: int = 5) -> Protocol:
    """Classes (2i, 2i+1) of a fixed-data classification task as experience i, labels 0 and 1
    (n_experiences up to half its classes: 5 for mnist1d and seq_digits)."""
    check_choice("split task", task, fixed_data_tasks())
    train, test = tasks.build(task, split="train"), tasks.build(task, split="test")
    n_pairs = _n_classes(train) // 2
    if isinstance(n_experiences, bool) or not isinstance(n_experiences, int) \
            or not 1 <= n_experiences <= n_pairs:
        raise SeqmemError(f"split n_experiences must be an integer in [1, {n_pairs}], got "
                          f"{n_experiences!r}")
    exps = []
    for i in range(n_experiences):
        pair = [2 * i, 2 * i + 1]
        exps.append(Experience(f"{pair[0]}/{pair[1]}", SplitTask(train, pair),
                               SplitTask(test, pair), 2, i if setting == "task" else 0))
    return Protocol(f"split_{task}", setting, exps, train.d_input, None)


@register_protocol("permuted")
def permuted(setting: str = "domain", *, task: str = "mnist1d", n_experiences: int = 3,
             seed: int = 0) -> Protocol:
    """The task with the time steps permuted per experience (the first unpermuted), each
    permutation drawn from a generator seeded by `seed`."""
    check_choice("permuted task", task, fixed_data_tasks())
    check_int("permuted n_experiences", n_experiences, low=1)
    train, test = tasks.build(task, split="train"), tasks.build(task, split="test")
    t = train._data()[0].shape[1]
    gen = torch.Generator().manual_seed(seed)
    exps = []
    for i in range(n_experiences):
        perm = torch.arange(t) if i == 0 else torch.randperm(t, generator=gen)  # (t,)
        exps.append(Experience(f"perm{i}", PermutedTask(train, perm), PermutedTask(test, perm),
                               _n_classes(train), i if setting == "task" else 0))
    return Protocol(f"permuted_{task}", setting, exps, train.d_input, None)


@register_protocol("tasks")
def from_tasks(setting: str = "task", *, configs: list[dict] | None = None) -> Protocol:
    """Experiences from task configs {"task": name, **options}; a task with a `split` option
    is evaluated on split="test"."""
    if not configs or not all(isinstance(c, dict) and "task" in c for c in configs):
        raise SeqmemError("protocol tasks needs a non-empty list of {task: name, ...options}")
    exps, kinds = [], set()
    d_input, vocab = 1, 0
    for i, c in enumerate(configs):
        opts = {k: v for k, v in c.items() if k != "task"}
        train = tasks.build(c["task"], **opts)
        test = train
        if "split" in tasks.hyperparameters(tasks.get(c["task"])) and "split" not in opts:
            test = tasks.build(c["task"], **opts, split="test")
        kinds.add(train.vocab is not None)
        if train.vocab is not None:
            vocab = max(vocab, len(train.vocab))
        else:
            d_input = max(d_input, train.d_input)
        exps.append(Experience(f"{i}:{c['task']}", train, test, _n_classes(train),
                               i if setting == "task" else 0, _loss(train)))
    if len(kinds) > 1:
        raise SeqmemError("protocol tasks: the tasks' inputs must be all token ids or all "
                          "real-valued")
    return Protocol("tasks", setting, exps, d_input, vocab or None)


@register_protocol("dynamics")
def dynamics(setting: str = "domain", *, systems: list[str] | None = None,
             dt: list[float | None] | None = None, seq_len: int = 50, burn_in: float = 10.0,
             noise: float = 0.0) -> Protocol:
    """Forecasting (next-step regression, MSE) of the dynamics task: experience i is system
    systems[i] sampled with step dt[i], so experiences are different systems or parameter
    regimes of one. The domain setting (default) shares one forecaster; "task" gives each
    experience its own linear read-out.

    Args:
        systems: the system of each experience (default [lorenz63, roessler]).
        dt: the sampling step of each experience (null entries, or null: each system's own).
        seq_len: steps per sequence.
        burn_in: time units integrated before the first sample.
        noise: observation noise (standardised units).
    """
    systems = ["lorenz63", "roessler"] if systems is None else systems
    if not isinstance(systems, list) or not systems:
        raise SeqmemError(f"dynamics systems must be a non-empty list of systems, got "
                          f"{systems!r}")
    dts = [None] * len(systems) if dt is None else dt
    if not isinstance(dts, list) or len(dts) != len(systems):
        raise SeqmemError(f"dynamics dt must be a list of one step (or null) per system "
                          f"({len(systems)}), got {dt!r}")
    exps = []
    for i, (system, step) in enumerate(zip(systems, dts, strict=True)):
        train = tasks.build("dynamics", system=system, dt=step, seq_len=seq_len,
                            burn_in=burn_in, noise=noise)
        name = system if step is None else f"{system}@dt={step:g}"
        exps.append(Experience(name, train, train, train.d_output, i if setting == "task" else 0,
                               "mse"))
    dims = {e.train.d_input for e in exps}
    if len(dims) > 1:
        got = ", ".join(f"{e.name}: {e.train.d_input}" for e in exps)
        raise SeqmemError(f"dynamics: one model reads every experience, so the systems need "
                          f"one dimension; got {got}")
    return Protocol("dynamics", setting, exps, dims.pop(), None)


from seqmem.continual import power_law as _power_law  # noqa: E402, F401  (registers it)

PROTOCOLS = tuple(protocol_names())

__all__ = ["PROTOCOLS", "SETTINGS", "Experience", "PermutedTask", "Protocol", "SplitTask",
           "build_protocol", "fixed_data_tasks"]
