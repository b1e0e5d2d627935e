"""The build tier: every object a job needs, made from its config in one place.

    config  ->  build_curriculum, build_task, build_model, build_optimizer, lr_schedule
            ->  train_parts (all of them, for `seqmem.train.loop.fit`)
            ->  build_continual (protocol, model and method of a continual-learning run)

train, continual, analysis, bench and the sweeps all build through here, so a model is made
the same way whichever command asks for it. Recipe choices are data: a task names the
training recipe of its source (`Task.recipe`, a key of `RECIPES`), and a recipe that defers
the optimizer to the mixer reads the mixer's `recipe_optimizer` (the flagship paper trains its
RNNs with SGD). Randomness is explicit: module initialisations draw from a seed inside
`seeded` (torch's modules draw from the global generator; `seeded` forks it and restores it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from seqmem import mixers, tasks
from seqmem.config import RunConfig
from seqmem.config.run import check_grid_mixers
from seqmem.continual.config import ContinualConfig
from seqmem.continual.methods import Method, build_method
from seqmem.continual.protocols import Protocol, build_protocol
from seqmem.curricula import Curriculum
from seqmem.devices import check_precision, resolve_device
from seqmem.errors import ConfigError, SeqmemError
from seqmem.models import SequenceModel
from seqmem.models.sequence import parse_pattern
from seqmem.store import Run, RunStore
from seqmem.train.distributed import local_device
from seqmem.train.gtf import set_identity_observation
from seqmem.train.loop import TrainParts, is_regression
from seqmem.train.schedules import check_schedule, lr_factor, refined_table


@dataclass(frozen=True)
class Recipe:
    """A training recipe: the optimizer and the learning-rate schedule that `auto` means.
    `optimizer="mixer"` defers to the mixer's `recipe_optimizer`, else `fallback`."""

    optimizer: str
    schedule: str
    fallback: str = "adam"
    source: str = ""


RECIPES: dict[str, Recipe] = {
    # The usual setting of the synthetic-task literature (Zoology, state tracking, ...).
    "synthetic": Recipe("adamw", "cosine", source="AdamW with a cosine decay over the budget"),
    # Khajehabdollahi et al. 2024: SGD with Nesterov momentum for the RNNs, Adam otherwise,
    # at a constant rate.
    "khajehabdollahi2024": Recipe("mixer", "constant", fallback="adam",
                                  source="Khajehabdollahi et al. (ICLR 2024)"),
}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adam": 0.0, "adamw": 0.01}


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw module initialisations from `seed`, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---- recipes --------------------------------------------------------------------------------
def recipe(cfg: RunConfig) -> Recipe:
    """The training recipe of the run's task."""
    name = getattr(cfg.task.task_class(), "recipe", "synthetic")
    if name not in RECIPES:
        raise SeqmemError(f"task {cfg.task.kind!r} names an unknown recipe {name!r}; known: "
                          f"{', '.join(RECIPES)}")
    return RECIPES[name]


def _mixer_optimizer(cfg: RunConfig) -> str | None:
    """The optimizer the run's mixers' source trains them with (None unless all agree)."""
    choices = {getattr(mixers.lookup(n), "recipe_optimizer", None)
               for n in parse_pattern(cfg.model.mixer.kind)}
    return choices.pop() if len(choices) == 1 else None


def optimizer_choice(cfg: RunConfig) -> tuple[str, float]:
    """(optimizer name, learning rate) after resolving "auto" and a missing lr."""
    name = cfg.train.optimizer
    if name == "auto":
        r = recipe(cfg)
        name = (_mixer_optimizer(cfg) or r.fallback) if r.optimizer == "mixer" else r.optimizer
    return name, cfg.train.lr if cfg.train.lr is not None else DEFAULT_LR[name]


def schedule_choice(cfg: RunConfig) -> str:
    """The learning-rate schedule after resolving "auto" (the task's recipe)."""
    return recipe(cfg).schedule if cfg.train.schedule == "auto" else cfg.train.schedule


def lr_schedule(cfg: RunConfig, *, root: str | Path = "runs"):
    """(step, elapsed_s) -> multiplier of the base learning rate (see
    `seqmem.train.schedules`): the resolved schedule over the budget, with `warmup_steps`.

    The budget is max_epochs * steps_per_epoch updates, and with `train.max_time_s` also the
    time: the schedule runs over whichever ends first (its progress is the larger of
    step / total and elapsed / max_time_s), so a run budgeted by time anneals in that time
    instead of keeping its rate."""
    t, name = cfg.train, schedule_choice(cfg)
    total = t.max_epochs * t.steps_per_epoch
    opts = {"min_lr": t.min_lr_fraction, "decay_fraction": t.decay_fraction,
            "decay_shape_name": t.decay_shape, "cooldown_fraction": t.cooldown_fraction,
            "constant_fraction": t.constant_fraction, "milestones": tuple(t.step_milestones),
            "gamma": t.step_gamma,
            "table": schedule_source_table(cfg, root) if name == "refined" else None}
    try:
        check_schedule(name, **opts)
    except SeqmemError as e:
        raise ConfigError(str(e), "train.schedule") from None

    def factor(step: int, elapsed_s: float = 0.0) -> float:
        if t.max_time_s is not None and step >= t.warmup_steps:
            by_time = t.warmup_steps + elapsed_s / t.max_time_s * (total - t.warmup_steps)
            step = max(step, int(by_time))
        return lr_factor(name, step, warmup_steps=t.warmup_steps, total_steps=total, **opts)

    return factor


def schedule_source_table(cfg: RunConfig, root: str | Path = "runs") -> list[float]:
    """The refined multipliers of `train.schedule_from` (a run's folder, or a run id or
    prefix in the store at `root`): see `seqmem.train.schedules.refined_table`."""
    ref = cfg.train.schedule_from
    if ref is None:
        raise ConfigError("the refined schedule needs train.schedule_from: a finished run "
                          "(its id, or its folder) whose gradient norms it refines",
                          "train.schedule_from")
    path = Path(ref)
    if (path / "metrics.jsonl").is_file():
        run = Run(path.name, path)
    else:
        store = RunStore(root)
        if not store.root.exists():
            raise ConfigError(f"no run folder {ref!r} and no store at {root}/ to look the id "
                              f"up in", "train.schedule_from")
        run = store.open_run(ref)
    return refined_table(run, smoothing=cfg.train.refine_smoothing)


# ---- what fits in memory --------------------------------------------------------------------
def available_bytes() -> int | None:
    """The memory this machine has available now (MemAvailable of /proc/meminfo), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(cfg: RunConfig, *, available: int | None = None) -> None:
    """Refuse a run whose one training batch cannot fit in memory: a lower bound of its size
    (the batch's inputs, targets and mask, and one d_model-wide activation and its gradient
    per layer and step, at the longest sequence the curriculum reaches) against the memory
    available. The error names the option that sets the length and the memory needed."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    cur = build_curriculum(cfg)
    last = cur.n_max if cur.kind != "none" else None
    task = build_task(cfg, cur, value=last, **({"N": last} if last and cur.knob == "N" else {}))
    steps = task.max_length()
    per_step = 4 * getattr(task, "d_input", 1) + 8 * len(task.heads) + 1 \
        + 2 * 4 * cfg.model.d_model * cfg.model.n_layers
    need = cfg.train.batch_size * steps * per_step
    if need > available:
        opt = (cur.knob if cur.kind != "none" and cur.knob != "N" else
               getattr(type(task), "length_option", None)
               or ("seq_len" if hasattr(task, "seq_len") else "N"))
        where = "curriculum.n_max" if cur.kind != "none" else f"task.{opt}"
        raise ConfigError(f"one batch of {cfg.train.batch_size} sequences of up to {steps:,} "
                          f"steps needs at least {need / 2**30:,.1f} GiB, and this machine has "
                          f"{available / 2**30:,.1f} GiB available; lower it, or "
                          f"train.batch_size or model.d_model", where)


# ---- the objects of a training run ---------------------------------------------------------
def build_curriculum(cfg: RunConfig) -> Curriculum:
    c = cfg.curriculum
    return Curriculum(kind=cfg.curriculum_kind(), n_start=c.n_start, n_max=c.n_max,
                      threshold=c.threshold, window=c.window, knob=c.knob, step=c.step)


def build_task(cfg: RunConfig, cur: Curriculum, *, split: str | None = None,
               value: int | None = None, **options) -> tasks.Task:
    """The task of the current curriculum stage: the configured task with N = the active N,
    or with the curriculum's knob at `value` (default its newest value). `split="test"`
    selects the held-out split of tasks that have a `split` option; `options` override the
    task's options (e.g. a longer sequence length)."""
    opts = cfg.task.options()
    active = cur.active_N()
    if active is not None and cur.knob != "N":
        opts[cur.knob] = cur.N if value is None else value
    elif active is not None:
        opts["N"] = active
    if split is not None and "split" in tasks.hyperparameters(cfg.task.task_class()):
        opts["split"] = split
    return tasks.build(cfg.task.kind, **{**opts, **options})


def build_model(cfg: RunConfig, cur: Curriculum | None = None) -> SequenceModel:
    """The SequenceModel of a run (heads for the whole curriculum); its weights are drawn from
    a generator seeded by cfg.seed."""
    cur = cur or build_curriculum(cfg)
    task = build_task(cfg, cur)
    heads = [task.heads[0]] * cur.n_heads if cur.n_heads else list(task.heads)
    m = cfg.model
    grid = check_grid(cfg, task)
    with seeded(cfg.seed):
        model = SequenceModel(
            task.d_input, m.d_model, mixer=m.mixer.kind, mixer_options=m.mixer.options(),
            n_layers=m.n_layers, block=m.block, heads=heads,
            vocab_size=len(task.vocab) if task.vocab else None,
            d_output=task.d_output if is_regression(task) else None, grid=grid,
        )
    if is_regression(task) and identity_observation(cfg):
        set_identity_observation(model)
    return model


def check_grid(cfg: RunConfig, task: tasks.Task) -> tuple[int, int] | None:
    """The task's grid (H, W) (None for a sequence task); a model with a 2-D mixer on a task
    without a grid is one ConfigError line naming the 2-D mixers and the grid tasks."""
    grid = getattr(task, "grid", None)
    check_grid_mixers(cfg.model.mixer.kind, cfg.task.kind, grid)
    return tuple(grid) if grid is not None else None


def identity_observation(cfg: RunConfig) -> bool:
    """Whether the model's regression head is the fixed identity read-out of its first N
    latent units: under latent teacher forcing (`train.gtf=latent`), and for a single mixer
    that declares it its observation (al_rnn, as in its paper)."""
    names = parse_pattern(cfg.model.mixer.kind)
    declared = len(set(names)) == 1 and getattr(mixers.lookup(names[0]), "observation",
                                                None) == "identity"
    return cfg.train.gtf == "latent" or declared


def build_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    name, lr = optimizer_choice(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    wd = t.weight_decay if t.weight_decay is not None else DEFAULT_WEIGHT_DECAY[name]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, nesterov=t.nesterov,
                               weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def train_parts(cfg: RunConfig, *, root: str | Path = "runs") -> TrainParts:
    """Everything `seqmem.train.loop.fit` needs for the run (`root`: the store in which
    `train.schedule_from` names a run)."""
    cur = build_curriculum(cfg)
    device = local_device(resolve_device(cfg.train.device))  # a rank's own GPU under torchrun
    check_precision(cfg.train.precision, device)
    # on train.device before the optimizer is made: its state follows the parameters
    model = build_model(cfg, cur).to(device)

    def make_task(c: Curriculum, **kw) -> tasks.Task:
        return build_task(cfg, c, **kw)

    return TrainParts(model=model, optimizer=build_optimizer(cfg, model), curriculum=cur,
                      make_task=make_task, base_lr=optimizer_choice(cfg)[1],
                      lr_factor=lr_schedule(cfg, root=root),
                      generator=torch.Generator().manual_seed(cfg.seed))


# ---- continual learning --------------------------------------------------------------------
def build_continual(cfg: ContinualConfig) -> tuple[Protocol, Method]:
    """The protocol, the model and the method of a continual-learning config (the model's
    weights drawn from cfg.seed)."""
    protocol = build_protocol(cfg.protocol, cfg.setting, **cfg.protocol_options.options())
    with seeded(cfg.seed):  # the model's initial weights (methods seed their own generators)
        model = SequenceModel(protocol.d_input, cfg.d_model, mixer=cfg.mixer,
                              mixer_options=cfg.mixer_options.options(),
                              n_layers=cfg.n_layers, heads=protocol.heads,
                              vocab_size=protocol.vocab_size)
    return protocol, build_method(cfg.method, model, protocol, seed=cfg.seed,
                                  **cfg.method_options.options())
