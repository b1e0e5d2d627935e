"""Run a continual-learning protocol with a method: train experience after experience, evaluate
every experience after each, record the accuracy matrix and its metrics in the store.

A protocol with a `schedule` (experiences revisited, `power_law`) trains one session per entry
of the schedule: R[k, j] is the score on distinct experience j after session k (L x T), and
the method is told the experience each session trains (`i`) and, in `method.seen`, the
experiences trained in earlier sessions. A regression protocol (loss "mse") records MSEs
instead of accuracies; its metrics follow the sign convention of `seqmem.continual.metrics`.

Schedule (the same for every method, so budgets match): `steps` optimizer steps per
experience, batches of `batch_size`, a fresh optimizer per experience; after experience i,
R[i, j] = accuracy on experience j's test task (`eval_batches` batches of `eval_batch_size`,
a fixed evaluation seed). Before training, the untrained model's accuracy on each experience
(the forward-transfer baseline); during experience i, its accuracy on one evaluation batch
every `curve_every` steps (the learning curve of LCA). A checkpoint after every experience
lets an interrupted or failed run resume from the last finished experience.

The run computes on `cfg.device` (`seqmem.devices.resolve_device`): the method (its model and
its own tensors) is moved there before the first step and after a resume; every batch is drawn
on the CPU by the run's generators and moved there, so the numbers drawn are the same on every
device.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from seqmem.continual.config import ContinualConfig
from seqmem.continual.methods import Method, experience_loss
from seqmem.continual.metrics import summarize
from seqmem.continual.protocols import Protocol
from seqmem.devices import resolve_device
from seqmem.errors import RunFailed

EVAL_SEED = 12345
HEADLINE = ("protocol", "setting", "method", "mixer", "seed", "avg_acc", "avg_loss", "bwt",
            "fwt", "forgetting", "lca", "elapsed_s")  # what the store indexes of a continual run


@torch.no_grad()
def evaluate(method: Method, j: int, n_batches: int, batch_size: int, seed: int) -> float:
    """Accuracy (for a regression experience: MSE) of the method on experience j's test task
    (a fixed seed per experience)."""
    gen = torch.Generator().manual_seed(seed + 7919 * j)
    task = method.protocol.experiences[j].test
    accs = []
    for _ in range(n_batches):
        batch = method.sample(task, batch_size, gen)  # drawn on the CPU, on the model's device
        _, acc = experience_loss(method.logits(j, batch.inputs), batch)
        accs.append(acc.item())
    return sum(accs) / len(accs)


def fit_continual(cfg: ContinualConfig, run, protocol: Protocol, method: Method, *,
                  emit: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Run the protocol with the method (both made by `seqmem.build.build_continual`); return
    the summary (R, baseline, curves and metrics). `run` (a store Run, or None) receives
    metrics lines, a checkpoint per experience and the summary."""
    emit = emit or (lambda ev: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    method.to(device)
    T = len(protocol)
    sessions = protocol.sessions
    gen = torch.Generator().manual_seed(cfg.seed)

    def eval_all() -> list[float]:
        return [evaluate(method, j, cfg.eval_batches, cfg.eval_batch_size, EVAL_SEED)
                for j in range(T)]

    regression = protocol.loss == "mse"
    score = "mse" if regression else "acc"  # what R, the baseline and the curves hold
    R: list[list[float]] = []
    curves: list[list[float]] = []
    start, elapsed0 = 0, 0.0
    if resume and run is not None and "last" in run.checkpoints():
        ck = run.load_checkpoint("last")
        method.load_state(ck["method"])
        method.to(device)  # a checkpoint's tensors come back on the CPU
        gen.set_state(ck["gen"])
        R, curves, baseline = ck["R"], ck["curves"], ck["baseline"]
        start, elapsed0 = int(ck["experience"]) + 1, float(ck["elapsed_s"])
    else:
        baseline = eval_all()
    t0 = time.monotonic() - elapsed0
    for k in range(start, len(sessions)):
        i = sessions[k]  # the experience this session trains
        method.seen = list(dict.fromkeys(sessions[:k]))  # trained before, in first-seen order
        method.before_experience(i, gen)
        opt = torch.optim.Adam(method.parameters(i), lr=cfg.lr)
        curve = [evaluate(method, i, 1, cfg.eval_batch_size, EVAL_SEED + 1)]
        losses = []
        for step in range(1, cfg.steps + 1):
            batches = method.train_batches(i, cfg.batch_size, gen)
            loss = sum(experience_loss(method.logits(j, b.inputs), b)[0] for j, b in batches)
            loss = loss + method.penalty(i)
            if not torch.isfinite(loss):
                raise RunFailed(f"non-finite loss ({loss.item()}) in session {k} (experience "
                                f"{i}), step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(i, batches, gen)
            losses.append(loss.item())
            if step % cfg.curve_every == 0:
                curve.append(evaluate(method, i, 1, cfg.eval_batch_size, EVAL_SEED + 1))
            emit({"event": "step", "experience": k, "step": step, "loss": losses[-1]})
        method.after_experience(i, gen)
        R.append(eval_all())
        curves.append(curve)
        elapsed = time.monotonic() - t0
        record = {"experience": k, "trained": i, "name": protocol.experiences[i].name,
                  "loss": sum(losses) / len(losses), "acc": R[-1], "curve": curve,
                  "elapsed_s": round(elapsed, 3)}
        emit({"event": "experience", **record, "score": score,
              "summary": {"experience": k, "acc_last_row": R[-1]}})
        if run is not None:
            run.log(record)
            run.save_checkpoint("last", {"method": method.state(), "gen": gen.get_state(),
                                         "R": R, "curves": curves, "baseline": baseline,
                                         "experience": k, "elapsed_s": elapsed})
    summary = {"protocol": protocol.name, "setting": protocol.setting, "method": cfg.method,
               "mixer": cfg.mixer, "seed": cfg.seed,
               "experiences": [e.name for e in protocol.experiences], "R": R,
               "baseline": baseline, "curves": curves, "score": score,
               "elapsed_s": round(time.monotonic() - t0, 3),
               **({"schedule": sessions} if protocol.schedule is not None else {}),
               **{key: (None if isinstance(v, float) and math.isnan(v) else v)
                  for key, v in summarize(R, baseline, curves, schedule=sessions,
                                          lower_is_better=regression).items()}}
    if run is not None:
        run.write_summary(summary)
    return summary


def aggregate(jobs, outcome) -> list[dict]:
    """The continual table of a methods x seeds grid: per method, the mean ± sd over seeds of
    the average accuracy (regression: average loss), backward and forward transfer,
    forgetting and LCA (text cells), and the runs."""
    by_method: dict[str, list[dict]] = {}
    for j in jobs:
        by_method.setdefault(j.cfg.method, []).append(
            {"run": j.run_id, **(outcome.summaries.get(j.run_id) or {})})

    def stat(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if not vals:
            return ""
        sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
        return f"{statistics.mean(vals):.3f}{sd}"

    return [{"method": m, **{k: stat(rows, k) for k in ("avg_acc", "avg_loss", "bwt", "fwt",
                                                         "forgetting", "lca")},
             "runs": ", ".join(r["run"] for r in rows)} for m, rows in by_method.items()]
