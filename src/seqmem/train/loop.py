"""The training loop: one plain loop for every mixer, task and curriculum.

    for each epoch:
        steps_per_epoch updates on batches of the current task (the curriculum's active N)
        eval_batches evaluation batches -> accuracy per active head
        the curriculum sees the accuracies and may advance N (a checkpoint at every advance)
        a checkpoint "last" (the last good state: model, optimiser, data generator, curriculum)

Before the first epoch a fresh run saves "last" (resumable from epoch 0) and "init", the
model's initial weights, which stays (e.g. for the weight change of `analysis.richness`).

Regression tasks (`task.loss == "mse"`, e.g. `dynamics`) train on the masked MSE of a linear
regression head and report MSE instead of accuracy; with `train.gtf_alpha` they train by
generalised teacher forcing (`gtf_predictions`; with `train.gtf=latent`, of the latent state,
`seqmem.train.gtf`); a mixer's auxiliary loss (`Mixer.aux_loss`, e.g. mom's load balancing)
is added to the training loss; after training, tasks with free-running
metrics get D_stsp and D_H of generated trajectories in the summary.

The loop touches only the run's folder (metrics, checkpoints, summary); it reports progress
through `emit(event)` so that the driver process is the only writer of the store's database.
A non-finite loss raises `RunFailed` before anything is saved, so "last" stays good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from seqmem import tasks
from seqmem.config import RunConfig, length_option
from seqmem.curricula import Curriculum
from seqmem.devices import autocast, compile_model, grad_scaler, model_device
from seqmem.errors import RunFailed
from seqmem.models import SequenceModel, masked_heads_loss, masked_mse, masked_mse_loss
from seqmem.ops import backends
from seqmem.tasks.base import Batch
from seqmem.train import distributed
from seqmem.train.gtf import latent_gtf_predictions
from seqmem.train.schedules import add_grad_noise

FREE_RUN_SEED = 2023  # test trajectories of the free-running metrics: the same for every run
INIT_CHECKPOINT = "init"  # the model's weights before the first update (a fresh run saves it)


def is_regression(task) -> bool:
    """True for tasks with real-valued targets (`loss = "mse"`)."""
    return getattr(task, "loss", "ce") == "mse"


def scaled_accuracy(acc: float, n_classes: int) -> float:
    """(acc - chance) / (1 - chance) with chance = 1 / n_classes: 0 at chance, 1 when solved."""
    chance = 1.0 / n_classes
    return (acc - chance) / (1.0 - chance)


@dataclass
class TrainParts:
    """What the loop trains, made by `seqmem.build.train_parts` from a run's config.

    `make_task(curriculum, split=None, value=None, **options)` is the task of a curriculum
    stage (see `seqmem.build.build_task`); `lr_factor(step, elapsed_s)` the schedule's
    multiplier of `base_lr` at an update step and training time (a time budget drives it).
    `fit` updates `curriculum` and `generator` as it trains, so after it they hold the run's
    final stage and data stream."""

    model: SequenceModel
    optimizer: torch.optim.Optimizer
    curriculum: Curriculum
    make_task: Callable[..., tasks.Task]
    base_lr: float
    lr_factor: Callable[[int, float], float]
    generator: torch.Generator  # the data generator (seeded by the run's seed)


def tau_stats(model: SequenceModel) -> dict:
    ts = model.timescales()
    if ts is None:
        return {}
    ts = ts.double()
    return {"tau_mean": ts.mean().item(), "tau_sd": ts.std().item() if ts.numel() > 1 else 0.0,
            "tau_max": ts.max().item()}


def gtf_predictions(model: SequenceModel, inputs: Tensor, alpha: float, state: list
                    ) -> Tensor:
    """The model's predictions (b, t, d) of x_1..x_t under generalised teacher forcing.

    Hess, Monfared, Brenner & Durstewitz 2023 (ICML), "Generalized Teacher Forcing for
    Learning Chaotic Dynamics", at the input level: the model runs step by step from
    x~_0 = x_0, predicts x^_{t+1} from its features, and reads next

        x~_{t+1} = alpha * x_{t+1} + (1 - alpha) * x^_{t+1}

    (inputs (b, t, d) are x_0..x_{t-1}; the last prediction is of x_t, the last target).
    Gradients flow through the fed-back prediction, as in the paper. alpha = 1 is ordinary
    teacher forcing (the same predictions as one forward pass), alpha = 0 free running.

    Relation to the paper (its latent-space form): the forced quantity is the same convex
    mixture, but the paper writes it into the latent state. With the identity observation
    model x_t = z_t[:N] (the shPLRNN's first N units are read out), the model steps from
    z~_t, where z~_t[:N] = alpha x_t + (1 - alpha) z_t[:N] (z_t[:N] being the model's own
    prediction of x_t) and z~_t[N:] = z_t[N:]: the mixture overwrites the readout units.
    Here the mixture is the model's next *input* (through the encoder and the mixer's input
    map, e.g. the PLRNN's C), which drives the state; the state itself is never overwritten,
    so any mixer can be trained this way. The limits are the same (alpha = 1 teacher forcing,
    alpha = 0 free running), but the paper's bound on gradients does not carry over: there
    d z_{t+1} / d z_t contains the factor (1 - alpha) on the forced units, here the direct
    state-to-state path is not scaled, only the path through the fed-back prediction.
    """
    preds = []
    x = inputs[:, 0]  # (b, d)
    t = inputs.shape[1]
    for k in range(t):
        h, state = model.step(x, state)
        y = model.predict(h)  # (b, d) the prediction of x_{k+1}
        preds.append(y)
        if k + 1 < t:
            x = alpha * inputs[:, k + 1] + (1 - alpha) * y
    return torch.stack(preds, dim=1)  # (b, t, d)


def check_finite_inputs(task, batch) -> None:
    """Raise RunFailed naming the first non-finite input (example, step): a NaN would spread
    to earlier positions through the chunked training forms (they mix the positions of a
    chunk), so it is stopped before the model sees it."""
    x = batch.inputs
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).reshape(x.shape[0], x.shape[1], -1).any(-1).nonzero()[0]
        i, t = int(bad[0]), int(bad[1])
        raise RunFailed(f"task {getattr(task, 'name', '') or type(task).__name__} gave a "
                        f"non-finite input ({x[i, t].flatten()[0].item()}) at example {i}, "
                        f"step {t} of a batch; the last good checkpoint is kept")


def run_batch(model, task, batch_size, heads, generator, counter: list | None = None, *,
              gtf_alpha: float | str | None = None, gtf: str = "input",
              precision: str = "fp32"):
    """Loss and per-head accuracy (regression tasks: per-channel MSE) of the model on one
    fresh batch (counter[0] += its tokens). `gtf_alpha`: generalised teacher forcing, of the
    input (`gtf="input"`, `gtf_predictions`) or of the latent state (`gtf="latent"`,
    `seqmem.train.gtf.latent_gtf_predictions`; alpha may be "adaptive"). The batch is drawn
    on the CPU by `generator` and moved to the model's device; `precision` is the autocast of
    the model's blocks (`seqmem.devices.autocast`)."""
    batch = task.sample(batch_size, generator=generator)
    return batch_loss(model, task, batch, heads, generator, counter, gtf_alpha=gtf_alpha,
                      gtf=gtf, precision=precision)


def batch_loss(model, task, batch, heads, generator, counter: list | None = None, *,
               gtf_alpha: float | str | None = None, gtf: str = "input",
               precision: str = "fp32"):
    """`run_batch` on a given batch (e.g. one of an exact pass over a held-out split). The
    loss is on the model's device, the per-head accuracies (or MSEs) on the CPU."""
    check_finite_inputs(task, batch)
    if counter is not None:
        counter[0] += batch.mask.numel()
    device = model_device(model)
    if batch.mask.device != device:
        batch = batch.to(device)
    b = batch.mask.shape[0]
    gtf_on = is_regression(task) and gtf_alpha is not None
    # the initial states are drawn for the whole batch (the same draws as one process), and
    # the final states of a batch are never used: no block builds them (attention's cache),
    # and a block whose initial state draws nothing starts from None
    state = model.init_state(b, generator=generator, drawn_only=not gtf_on)
    rank, world = distributed.rank_and_world()
    if world > 1:  # data parallel: this rank's share of the sequences
        part = distributed.share(b, rank, world)
        n_all = batch.mask.sum()
        batch = Batch(batch.inputs[part], batch.targets[part], batch.mask[part])
        state = distributed.share_tree(state, part)
    if gtf_on:
        forward = latent_gtf_predictions if gtf == "latent" else gtf_predictions
        with autocast(device, precision):
            pred = forward(model, batch.inputs, gtf_alpha, state)
        loss, per_head = masked_mse(_full_precision(pred), batch.targets, batch.mask)
    else:
        # the mixers' auxiliary losses (e.g. mom's load balancing), in training mode only
        aux: list | None = [] if model.training else None
        with autocast(device, precision):  # the blocks; the heads and the loss in float32
            h, _ = model.features(batch.inputs, state, aux=aux, final_state=False)
        h = _full_precision(h)
        if is_regression(task):
            loss, per_head = masked_mse_loss(model, h, batch.targets, batch.mask)
        else:
            loss, per_head = masked_heads_loss(model, h, batch.targets, batch.mask, heads)
        if aux:
            loss = loss + sum(aux)
    if world > 1:
        loss, per_head = _summed_over_ranks(loss, per_head, batch.mask.sum(), n_all)
    return loss, per_head.detach().cpu()


def _full_precision(x: Tensor) -> Tensor:
    """x in float32 if autocast left it in bf16 / fp16 (the heads and the loss run in full
    precision), else as it is (a float64 model stays float64)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _summed_over_ranks(loss: Tensor, per_head: Tensor, n: Tensor, n_all: Tensor):
    """A rank's loss and per-head scores (means over its n supervised positions) as shares
    of the whole batch's (n_all positions): weighted by n / n_all, so that their sums over
    the ranks are the whole batch's means. The loss returned has the whole batch's value and
    this rank's share's gradient (the all-reduce of the gradients sums the shares)."""
    w = (n / n_all).to(loss.dtype)
    if int(n) == 0:  # no supervised position in this share: it adds nothing
        loss, per_head = loss.nan_to_num(0.0), per_head.nan_to_num(0.0)
    share = loss * w
    total = distributed.sum_across(torch.cat([share.detach().reshape(1),
                                              (per_head.detach() * w).reshape(-1)]))
    return share + (total[0] - share).detach(), total[1:]


def exact_pass(cfg: RunConfig, task) -> bool:
    """Whether to evaluate on one exact pass over the task's held-out split: `eval.exact`,
    or by default (None) whenever the task has a finite split to pass over."""
    finite = hasattr(task, "iter_batches")
    return finite if cfg.eval.exact is None else (cfg.eval.exact and finite)


@torch.no_grad()
def evaluate(cfg: RunConfig, model, task, heads: list[int], gen, *, d_out: int
             ) -> tuple[list[float], float]:
    """Per-head accuracy (regression: per-channel MSE) and the loss summed as eval_batches
    batches would be: on one exact pass over a finite split (each example once, batches
    weighted by their size), else on `train.eval_batches` fresh batches."""
    t = cfg.train
    accs = torch.zeros(d_out, dtype=torch.float64)
    if exact_pass(cfg, task):
        n, loss_sum = 0, 0.0
        for batch in task.iter_batches(t.batch_size):
            b = batch.mask.shape[0]
            loss, acc = batch_loss(model, task, batch, heads, gen, precision=t.precision)
            accs += acc.double() * b
            loss_sum += loss.item() * b
            n += b
        return (accs / n).tolist(), loss_sum / n * t.eval_batches
    eval_loss = 0.0
    for _ in range(t.eval_batches):
        loss, acc = run_batch(model, task, t.batch_size, heads, gen, precision=t.precision)
        accs += acc.double()
        eval_loss += loss.item()
    return (accs / t.eval_batches).tolist(), eval_loss


@torch.no_grad()
def knob_eval(model, values: list[int], task_at, heads: list[int], gen, t) -> tuple:
    """Accuracy and scaled accuracy per knob value (means over the heads) on the held-out
    split, ceil(eval_batches / values) batches each; and the mean evaluation loss times
    eval_batches (as the default path sums it)."""
    per_value = max(1, -(-t.eval_batches // len(values)))
    accs, scaled, total = [], [], 0.0
    for v in values:
        a = torch.zeros(len(heads), dtype=torch.float64)
        for _ in range(per_value):
            loss, acc = run_batch(model, task_at(v, "test"), t.batch_size, heads, gen,
                                  precision=t.precision)
            a += acc.double() / per_value
            total += loss.item() / (per_value * len(values))
        accs.append(a.mean().item())
        scaled.append(sum(scaled_accuracy(x, model.heads[i].out_features)
                          for x, i in zip(a.tolist(), heads, strict=True)) / len(heads))
    return accs, scaled, total * t.eval_batches


def summarize(cfg: RunConfig, cur: Curriculum, stages: list, epoch: int, elapsed: float,
              last: dict | None, stop_reason: str | None) -> dict:
    """The run's summary: what the store indexes and the comparison table reads."""
    s = {"curriculum": cur.kind, "mixer": cfg.model.mixer.kind, "task": cfg.task.kind,
         "epochs": epoch, "elapsed_s": round(elapsed, 2), "stop_reason": stop_reason}
    if cur.kind != "none":  # what a curriculum reached (a run without one has no stages)
        s.update({"knob": cur.knob, "n_solved": cur.n_solved, "n_current": cur.N,
                  "curriculum_finished": cur.finished,
                  "epochs_per_N": {str(k): v for k, v in sorted(cur.epochs_per_N.items())},
                  "stages": stages})
    if last:
        for k in ("state_size", "n_params", "train_tokens_per_s"):
            if k in last:
                s[k] = last[k]
        for k in ("acc", "acc_mean", "acc_scaled", "mse", "eval_mse", "eval_mse_per_channel",
                  "eval_on"):
            if k in last:
                s[k] = last[k]
        for k in ("tau_mean", "tau_sd", "tau_max"):
            if k in last:
                s[k] = last[k]
    return s


def fit(cfg: RunConfig, run, parts: TrainParts, *, emit: Callable[[dict], None] | None = None,
        resume: bool = False) -> dict:
    """`train` under the ops' kernel choice of `train.backend` (`seqmem.ops.backends`)."""
    with backends.use(cfg.train.backend):
        return train(cfg, run, parts, emit=emit, resume=resume)


def train(cfg: RunConfig, run, parts: TrainParts, *,
          emit: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Train `parts.model` under its curriculum until the budget or the curriculum ends.

    `run` is the run's folder (a `seqmem.store.Run`). With `resume`, state comes from its
    checkpoint "last" and training continues exactly where it stopped. Returns the summary
    (evaluation after training, e.g. free-running metrics, is `seqmem.engine`'s job).
    Raises RunFailed on a non-finite loss (nothing is saved for that epoch).
    """
    emit = emit or (lambda event: None)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    cur, model, opt = parts.curriculum, parts.model, parts.optimizer
    gen = parts.generator
    # the model is on train.device (seqmem.build.train_parts); fp16 scales its gradients
    scaler = grad_scaler(model_device(model), t.precision)
    if t.compile:
        compile_model(model)
    if distributed.active():  # every rank starts from rank 0's weights
        distributed.broadcast_parameters(model)
    epoch, elapsed, stages, last = 0, 0.0, [], None
    if resume:  # the checkpoint's tensors are on the CPU: loading moves them to the model's
        ck = run.load_checkpoint("last")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        gen.set_state(ck["rng"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        st = ck["train"]
        cur = parts.curriculum = Curriculum.from_state(st["curriculum"])
        epoch, elapsed, stages, last = st["epoch"], st["elapsed_s"], st["stages"], st["last"]
        if last is not None:  # stopped between the epoch's checkpoint and its metrics line?
            run.log(last)  # (logging an epoch is idempotent: a logged one is not repeated)
    else:  # a checkpoint before the first epoch: a run stopped during it can be resumed
        run.save_checkpoint("last", checkpoint(model, opt, gen, cur, 0, 0.0, [], None, scaler))
        # the initial weights, kept: what training changed is measured against them
        run.save_checkpoint(INIT_CHECKPOINT, {"model": model.state_dict()})
    emit({"event": "start", "epoch": epoch, "resume": resume,
          "summary": summarize(cfg, cur, stages, epoch, elapsed, last, None)})

    base_lr = parts.base_lr

    hits = [0]  # consecutive evaluations at or above train.target_acc

    def budget_left() -> str | None:
        if cur.finished:
            return "curriculum finished"
        if t.target_acc is not None and cur.kind == "none" and hits[0] >= t.target_patience:
            return "target_acc"
        if epoch >= t.max_epochs:
            return "max_epochs"
        if t.max_time_s is not None and elapsed >= t.max_time_s:
            return "max_time_s"
        return None

    knob = cur.knob != "N" and cur.kind != "none"  # a curriculum over another task option
    knob_tasks: dict[tuple, tasks.Task] = {}

    def task_at(value: int, split: str | None = None) -> tasks.Task:
        if (value, split) not in knob_tasks:
            knob_tasks[value, split] = parts.make_task(cur, split=split, value=value)
        return knob_tasks[value, split]

    while (stop := budget_left()) is None:
        t0 = time.perf_counter()
        task = parts.make_task(cur)
        heads = cur.active_heads(len(task.heads))
        values = cur.active_N() if knob else None
        model.train()
        losses, tokens, step_lr, step_gn = [], [0], [], []
        for step in range(t.steps_per_epoch):
            if knob:  # a uniform mixture of the values reached (one value under single)
                task = task_at(values[int(torch.randint(len(values), (), generator=gen))])
            loss, _ = run_batch(model, task, t.batch_size, heads, gen, counter=tokens,
                                gtf_alpha=t.gtf_alpha, gtf=t.gtf, precision=t.precision)
            if not torch.isfinite(loss):
                raise RunFailed(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step "
                                f"{step + 1}; the last good checkpoint is kept")
            lr = base_lr * parts.lr_factor(epoch * t.steps_per_epoch + step,
                                           elapsed + time.perf_counter() - t0)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            (loss if scaler is None else scaler.scale(loss)).backward()
            if distributed.active():  # data parallel: the whole batch's gradients
                distributed.reduce_gradients(model)
            if scaler is not None:  # fp16: the scaled loss's gradients, unscaled to clip
                scaler.unscale_(opt)
            # the norm of the loss's gradient, before clipping and noise: what a refined
            # schedule (seqmem.train.schedules.refine_schedule) is made from
            step_gn.append(grad_norm(model, t.clip))
            if t.grad_noise is not None:
                add_grad_noise(model.parameters(), epoch * t.steps_per_epoch + step,
                               t.grad_noise, t.grad_noise_gamma, gen)
            if scaler is None:
                opt.step()
            else:  # skips the update when a gradient overflowed, and adapts the scale
                scaler.step(opt)
                scaler.update()
            losses.append(loss.item())
            step_lr.append(lr)
        train_s = time.perf_counter() - t0
        model.eval()
        eval_task = parts.make_task(cur, split="test")
        regression = is_regression(task)
        if knob:  # accuracy per value (mean over the heads), eval_batches shared out
            accs, scaled, eval_loss = knob_eval(model, values, task_at, heads, gen, t)
        else:
            with torch.no_grad():
                accs, eval_loss = evaluate(cfg, model, eval_task, heads, gen,
                                           d_out=task.d_output if regression else len(heads))
            scaled = [scaled_accuracy(a, model.heads[i].out_features)
                      for a, i in zip(accs, heads, strict=True)] if not regression else []
        epoch += 1
        elapsed += time.perf_counter() - t0
        n_trained = cur.N
        advanced = cur.update([] if regression else accs)
        if regression:  # MSE, no accuracy: nothing for target_acc or a curriculum to read
            scores = {"mse": sum(losses) / len(losses), "eval_mse": eval_loss / t.eval_batches,
                      "eval_mse_per_channel": accs}
        else:
            scores = {"acc": accs, "acc_mean": sum(accs) / len(accs),
                      "acc_scaled": sum(scaled) / len(scaled)}
        if scores.get("acc_mean") is not None and t.target_acc is not None:
            hits[0] = hits[0] + 1 if scores["acc_mean"] >= t.target_acc else 0
        last = {
            "epoch": epoch, **({"N": n_trained} if cur.kind != "none" else {}),
            "active_N": task_N(task), **scores,
            # what the accuracy is measured on: the evaluation task with its split and lengths
            "eval_on": repr(eval_task),
            "loss": sum(losses) / len(losses),
            "train_tokens_per_s": round(tokens[0] / max(train_s, 1e-9), 1),
            "eval_loss": eval_loss / t.eval_batches, "elapsed_s": round(elapsed, 3),
            "advanced": advanced, "lr": lr, **tau_stats(model),
            # every update's learning rate, loss and gradient norm (seqmem.train.schedules)
            "step_lr": step_lr, "step_loss": losses, "step_grad_norm": step_gn,
            "state_size": model_state_size(model, eval_task),
            "n_params": sum(p.numel() for p in model.parameters()),
        }
        if advanced:
            stage = {"N": n_trained, "epoch": epoch, "elapsed_s": round(elapsed, 2),
                     **tau_stats(model)}
            stages.append(stage)
            run.save_checkpoint(f"N{n_trained:03d}", checkpoint(model, opt, gen, cur, epoch,
                                                                elapsed, stages, last, scaler))
        run.save_checkpoint("last", checkpoint(model, opt, gen, cur, epoch, elapsed, stages, last,
                                               scaler))
        run.log(last)  # after the checkpoint: a logged epoch always has its checkpoint to resume
        summary = summarize(cfg, cur, stages, epoch, elapsed, last, None)
        run.write_summary(summary)
        emit({"event": "epoch", "record": last, "summary": summary})
        if advanced:
            emit({"event": "advance", "stage": stages[-1], "summary": summary})
    summary = summarize(cfg, cur, stages, epoch, elapsed, last, stop)
    run.write_summary(summary)
    return summary


def grad_norm(model: torch.nn.Module, clip: float | None) -> float:
    """The total 2-norm of the model's gradients, which are then clipped to `clip` (None:
    not clipped)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if clip:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad.detach()) for p in params])))


def eval_lengths(cfg: RunConfig, parts: TrainParts, gen: torch.Generator) -> dict[str, float]:
    """Accuracy (mean over active heads; regression tasks: the MSE) of the trained model on the
    task rebuilt at each of `cfg.eval.lengths` (length generalisation). Keys are the lengths
    as strings."""
    cur, model = parts.curriculum, parts.model
    base = parts.make_task(cur, split="test")
    opt_name = length_option(type(base))
    heads = cur.active_heads(len(base.heads))
    out = {}
    model.eval()
    with torch.no_grad():
        for n in cfg.eval.lengths:
            task = parts.make_task(cur, split="test", **{opt_name: n})
            accs = [run_batch(model, task, cfg.train.batch_size, heads, gen,
                              precision=cfg.train.precision)[1].double().mean()
                    for _ in range(cfg.eval.batches)]
            out[str(n)] = round(float(sum(accs) / len(accs)), 6)
    return out


def model_state_size(model: SequenceModel, task) -> int:
    """Floats of recurrent state per sequence, summed over the blocks; a mixer whose state
    grows with t (attention's KV cache) is counted at the task's sequence length, a 2-D
    mixer's (the state carried from one row block to the next) at the grid's width."""
    t = None
    total = 0
    for blk in model.blocks:
        m = blk.mixer
        if getattr(blk, "grid", None) is not None:  # a 2-D mixer: the state of a grid's width
            total += int(m.state_size(blk.grid[1]))
        elif getattr(m, "state_grows", False):
            if t is None:
                probe = task.sample(1, generator=torch.Generator().manual_seed(0))
                t = int(probe.mask.shape[1])
            total += int(m.state_size(t))
        else:
            total += int(m.state_size())
    return total


def task_N(task) -> list[int] | None:
    n = getattr(task, "N", None)
    if n is None:
        return None
    return list(n) if isinstance(n, list | tuple) else [int(n)]


def checkpoint(model, opt, gen, cur, epoch, elapsed, stages, last, scaler=None) -> dict:
    """Everything a run resumes from; the store writes its tensors from any device to the
    CPU, and loading puts them back on the model's device (a run resumes on another)."""
    out = {
        "model": model.state_dict(), "optim": opt.state_dict(), "rng": gen.get_state(),
        "train": {"epoch": epoch, "elapsed_s": elapsed, "curriculum": cur.state_dict(),
                  "stages": stages, "last": last},
    }
    if scaler is not None:  # fp16's loss scale and its growth tracker
        out["scaler"] = scaler.state_dict()
    return out

