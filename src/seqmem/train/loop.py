"""The training loop: one plain loop for every mixer, task and curriculum.

    for each epoch:
        steps_per_epoch updates on batches of the current task (the curriculum's active N)
        eval_batches evaluation batches -> accuracy per active head
        the curriculum sees the accuracies and may advance N (a checkpoint at every advance)
        a checkpoint "last" (the last good state: model, optimiser, data generator, curriculum)

The loop touches only the run's folder (metrics, checkpoints, summary); it reports progress
through `emit(event)` so that the driver process is the only writer of the store's database.
A non-finite loss raises `RunFailed` before anything is saved, so "last" stays good.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from seqmem import tasks
from seqmem.config import RunConfig
from seqmem.errors import RunFailed
from seqmem.models import SequenceModel, masked_heads_loss
from seqmem.train.curricula import Curriculum

SGD_MIXERS = ("leaky_rnn", "elman")
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}


def make_curriculum(cfg: RunConfig) -> Curriculum:
    return Curriculum(**cfg.curriculum.model_dump())


def make_task(cfg: RunConfig, cur: Curriculum) -> tasks.Task:
    """The task of the current curriculum stage (the configured task with N = active N)."""
    opts = {k: v for k, v in cfg.task.items() if k != "kind"}
    active = cur.active_N()
    if active is not None:
        opts["N"] = active
    return tasks.build(cfg.task["kind"], **opts)


def build_model(cfg: RunConfig, cur: Curriculum) -> SequenceModel:
    """The SequenceModel of a run; its weights are drawn from a generator seeded by cfg.seed."""
    task = make_task(cfg, cur)
    heads = [task.heads[0]] * cur.n_heads if cur.n_heads else list(task.heads)
    m = cfg.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return SequenceModel(
            task.d_input, m.d_model,
            mixer=m.mixer["kind"], mixer_options={k: v for k, v in m.mixer.items() if k != "kind"},
            n_layers=m.n_layers, block=m.block, heads=heads,
            vocab_size=len(task.vocab) if task.vocab else None,
        )


def optimizer_choice(cfg: RunConfig) -> tuple[str, float]:
    """(optimizer name, learning rate) after resolving "auto" and a missing lr."""
    name = cfg.train.optimizer
    if name == "auto":
        name = "sgd" if cfg.model.mixer["kind"] in SGD_MIXERS else "adam"
    return name, cfg.train.lr if cfg.train.lr is not None else DEFAULT_LR[name]


def make_optimizer(cfg: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    name, lr = optimizer_choice(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    t = cfg.train
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum,
                               nesterov=t.nesterov and t.momentum > 0, weight_decay=t.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay)


def tau_stats(model: SequenceModel) -> dict:
    ts = model.timescales()
    if ts is None:
        return {}
    ts = ts.double()
    return {"tau_mean": ts.mean().item(), "tau_sd": ts.std().item() if ts.numel() > 1 else 0.0,
            "tau_max": ts.max().item()}


def run_batch(model, task, batch_size, heads, generator):
    batch = task.sample(batch_size, generator=generator)
    state = model.init_state(batch_size, generator=generator)
    h, _ = model.features(batch.inputs, state)
    return masked_heads_loss(model, h, batch.targets, batch.mask, heads)


def summarize(cfg: RunConfig, cur: Curriculum, stages: list, epoch: int, elapsed: float,
              last: dict | None, stop_reason: str | None) -> dict:
    """The run's summary: what the store indexes and the comparison table reads."""
    s = {
        "curriculum": cur.kind, "mixer": cfg.model.mixer["kind"], "task": cfg.task["kind"],
        "epochs": epoch, "elapsed_s": round(elapsed, 2), "n_solved": cur.n_solved,
        "n_current": cur.N if cur.kind != "none" else None, "finished": cur.finished,
        "epochs_per_N": {str(k): v for k, v in sorted(cur.epochs_per_N.items())},
        "stages": stages, "stop_reason": stop_reason,
    }
    if last:
        s["acc"] = last["acc"]
        s["acc_mean"] = last["acc_mean"]
        for k in ("tau_mean", "tau_sd", "tau_max"):
            if k in last:
                s[k] = last[k]
    return s


def train(cfg: RunConfig, run, *, emit: Callable[[dict], None] | None = None,
          resume: bool = False) -> dict:
    """Train the run's model under its curriculum until the budget or the curriculum ends.

    `run` is the run's folder (a `seqmem.store.Run`). With `resume`, state comes from its
    checkpoint "last" and training continues exactly where it stopped. Returns the summary.
    Raises RunFailed on a non-finite loss (nothing is saved for that epoch).
    """
    emit = emit or (lambda event: None)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    cur = make_curriculum(cfg)
    model = build_model(cfg, cur)
    opt = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    epoch, elapsed, stages, last = 0, 0.0, [], None
    if resume:
        ck = run.load_checkpoint("last")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        gen.set_state(ck["rng"])
        st = ck["train"]
        cur = Curriculum.from_state(st["curriculum"])
        epoch, elapsed, stages, last = st["epoch"], st["elapsed_s"], st["stages"], st["last"]
    emit({"event": "start", "epoch": epoch, "resume": resume,
          "summary": summarize(cfg, cur, stages, epoch, elapsed, last, None)})

    def budget_left() -> str | None:
        if cur.finished:
            return "curriculum finished"
        if epoch >= t.max_epochs:
            return "max_epochs"
        if t.max_time_s is not None and elapsed >= t.max_time_s:
            return "max_time_s"
        return None

    while (stop := budget_left()) is None:
        t0 = time.perf_counter()
        task = make_task(cfg, cur)
        heads = cur.active_heads(len(task.heads))
        model.train()
        losses = []
        for step in range(t.steps_per_epoch):
            loss, _ = run_batch(model, task, t.batch_size, heads, gen)
            if not torch.isfinite(loss):
                raise RunFailed(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step "
                                f"{step + 1}; the last good checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip)
            opt.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            accs = torch.zeros(len(heads), dtype=torch.float64)
            eval_loss = 0.0
            for _ in range(t.eval_batches):
                loss, acc = run_batch(model, task, t.batch_size, heads, gen)
                accs += acc.double()
                eval_loss += loss.item()
            accs = (accs / t.eval_batches).tolist()
        epoch += 1
        elapsed += time.perf_counter() - t0
        n_trained = cur.N
        advanced = cur.update(accs)
        last = {
            "epoch": epoch, "N": n_trained, "active_N": task_N(task), "acc": accs,
            "acc_mean": sum(accs) / len(accs), "loss": sum(losses) / len(losses),
            "eval_loss": eval_loss / t.eval_batches, "elapsed_s": round(elapsed, 3),
            "advanced": advanced, **tau_stats(model),
        }
        if advanced:
            stage = {"N": n_trained, "epoch": epoch, "elapsed_s": round(elapsed, 2),
                     **tau_stats(model)}
            stages.append(stage)
            run.save_checkpoint(f"N{n_trained:03d}", checkpoint(model, opt, gen, cur, epoch,
                                                                elapsed, stages, last))
        run.save_checkpoint("last", checkpoint(model, opt, gen, cur, epoch, elapsed, stages, last))
        run.log(last)  # after the checkpoint: a logged epoch always has its checkpoint to resume
        summary = summarize(cfg, cur, stages, epoch, elapsed, last, None)
        run.write_summary(summary)
        emit({"event": "epoch", "record": last, "summary": summary})
        if advanced:
            emit({"event": "advance", "stage": stages[-1], "summary": summary})
    summary = summarize(cfg, cur, stages, epoch, elapsed, last, stop)
    run.write_summary(summary)
    return summary


def task_N(task) -> list[int] | None:
    n = getattr(task, "N", None)
    if n is None:
        return None
    return list(n) if isinstance(n, list | tuple) else [int(n)]


def checkpoint(model, opt, gen, cur, epoch, elapsed, stages, last) -> dict:
    return {
        "model": model.state_dict(), "optim": opt.state_dict(), "rng": gen.get_state(),
        "train": {"epoch": epoch, "elapsed_s": elapsed, "curriculum": cur.state_dict(),
                  "stages": stages, "last": last},
    }

