"""Run a continual-learning protocol with a method: train experience after experience, evaluate
every experience after each, record the accuracy matrix and its metrics in the store.

Schedule (the same for every method, so budgets match): `steps` optimizer steps per
experience, batches of `batch_size`, a fresh optimizer per experience; after experience i,
R[i, j] = accuracy on experience j's test task (`eval_batches` batches of `eval_batch_size`,
a fixed evaluation seed). Before training, the untrained model's accuracy on each experience
(the forward-transfer baseline); during experience i, its accuracy on one evaluation batch
every `curve_every` steps (the learning curve of LCA). A checkpoint after every experience
lets an interrupted or failed run resume from the last finished experience.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal

import torch
import yaml
from pydantic import Field, ValidationError

from seqmem.config import Strict, apply_overrides, format_validation_error
from seqmem.continual.methods import METHODS, Method, build_method, experience_loss
from seqmem.continual.metrics import summarize
from seqmem.continual.protocols import PROTOCOLS, Protocol, build_protocol
from seqmem.errors import ConfigError, RunFailed, SeqmemError
from seqmem.models import SequenceModel

EVAL_SEED = 12345


class ContinualConfig(Strict):
    """A continual-learning run: protocol x method x model x schedule."""

    name: str | None = None
    protocol: Literal[PROTOCOLS] = "n_curriculum"  # type: ignore[valid-type]
    setting: Literal["task", "domain"] | None = None  # None: the protocol's default
    protocol_options: dict = Field(default_factory=dict)  # e.g. {n_max: 6, task: n_dms}
    method: Literal[METHODS] = "finetune"  # type: ignore[valid-type]
    method_options: dict = Field(default_factory=dict)  # e.g. {ewc_lambda: 1000}
    mixer: str = "leaky_rnn"
    mixer_options: dict = Field(default_factory=dict)
    d_model: int = Field(64, ge=1)
    n_layers: int = Field(1, ge=1)
    steps: int = Field(300, ge=1)  # per experience
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    eval_batches: int = Field(4, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    curve_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)


def load_continual_config(source=None, overrides: list[str] | None = None) -> ContinualConfig:
    """A ContinualConfig from a YAML file, a dict or the defaults, then dotted overrides."""
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = source
    else:
        try:
            with open(source) as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"continual config {str(source)!r} cannot be read: "
                              f"{str(e).splitlines()[0]}") from None
    data = apply_overrides(data, overrides or [])
    try:
        return ContinualConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def build(cfg: ContinualConfig) -> tuple[Protocol, Method]:
    """The protocol, the model and the method of a config (the model seeded by cfg.seed)."""
    protocol = build_protocol(cfg.protocol, cfg.setting, **cfg.protocol_options)
    torch.manual_seed(cfg.seed)  # the model's initialisation (torch's modules draw globally)
    model = SequenceModel(protocol.d_input, cfg.d_model, mixer=cfg.mixer,
                          mixer_options=cfg.mixer_options, n_layers=cfg.n_layers,
                          heads=protocol.heads, vocab_size=protocol.vocab_size)
    return protocol, build_method(cfg.method, model, protocol, seed=cfg.seed,
                                  **cfg.method_options)


@torch.no_grad()
def evaluate(method: Method, j: int, n_batches: int, batch_size: int, seed: int) -> float:
    """Accuracy of the method on experience j's test task (a fixed seed per experience)."""
    gen = torch.Generator().manual_seed(seed + 7919 * j)
    task = method.protocol.experiences[j].test
    accs = []
    for _ in range(n_batches):
        batch = task.sample(batch_size, generator=gen)
        _, acc = experience_loss(method.logits(j, batch.inputs), batch)
        accs.append(acc.item())
    return sum(accs) / len(accs)


def train_continual(cfg: ContinualConfig, run=None, *, emit: Callable[[dict], None] | None = None,
                    resume: bool = False) -> dict:
    """Run the protocol; return the summary (R, baseline, curves and metrics). `run` (a store
    Run) receives metrics lines, a checkpoint per experience and the summary."""
    emit = emit or (lambda ev: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    protocol, method = build(cfg)
    T = len(protocol)
    gen = torch.Generator().manual_seed(cfg.seed)

    def eval_all() -> list[float]:
        return [evaluate(method, j, cfg.eval_batches, cfg.eval_batch_size, EVAL_SEED)
                for j in range(T)]

    R: list[list[float]] = []
    curves: list[list[float]] = []
    start, elapsed0 = 0, 0.0
    if resume and run is not None and "last" in run.checkpoints():
        ck = run.load_checkpoint("last")
        method.load_state(ck["method"])
        gen.set_state(ck["gen"])
        R, curves, baseline = ck["R"], ck["curves"], ck["baseline"]
        start, elapsed0 = int(ck["experience"]) + 1, float(ck["elapsed_s"])
    else:
        baseline = eval_all()
    t0 = time.monotonic() - elapsed0
    for i in range(start, T):
        method.before_experience(i, gen)
        opt = torch.optim.Adam(method.parameters(i), lr=cfg.lr)
        curve = [evaluate(method, i, 1, cfg.eval_batch_size, EVAL_SEED + 1)]
        losses = []
        for step in range(1, cfg.steps + 1):
            batches = method.train_batches(i, cfg.batch_size, gen)
            loss = sum(experience_loss(method.logits(j, b.inputs), b)[0] for j, b in batches)
            loss = loss + method.penalty(i)
            if not torch.isfinite(loss):
                raise RunFailed(f"non-finite loss ({loss.item()}) in experience {i}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step(i, batches, gen)
            losses.append(loss.item())
            if step % cfg.curve_every == 0:
                curve.append(evaluate(method, i, 1, cfg.eval_batch_size, EVAL_SEED + 1))
            emit({"event": "step", "experience": i, "step": step, "loss": losses[-1]})
        method.after_experience(i, gen)
        R.append(eval_all())
        curves.append(curve)
        elapsed = time.monotonic() - t0
        record = {"experience": i, "name": protocol.experiences[i].name,
                  "loss": sum(losses) / len(losses), "acc": R[-1], "curve": curve,
                  "elapsed_s": round(elapsed, 3)}
        emit({"event": "experience", **record})
        if run is not None:
            run.log(record)
            run.save_checkpoint("last", {"method": method.state(), "gen": gen.get_state(),
                                         "R": R, "curves": curves, "baseline": baseline,
                                         "experience": i, "elapsed_s": elapsed})
    summary = {"protocol": protocol.name, "setting": protocol.setting, "method": cfg.method,
               "mixer": cfg.mixer, "seed": cfg.seed,
               "experiences": [e.name for e in protocol.experiences], "R": R,
               "baseline": baseline, "curves": curves,
               "elapsed_s": round(time.monotonic() - t0, 3),
               **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                  for k, v in summarize(R, baseline, curves).items()}}
    if run is not None:
        run.write_summary(summary)
    return summary


def run_continual(cfg: ContinualConfig, store, *, progress: bool = True, console=None,
                  resume_id: str | None = None) -> tuple[str, str, dict]:
    """Train in this process with a progress bar, recording every ending in the store:
    (run id, status, summary). An interrupted run is resumable with its id."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if resume_id:
        run = store.open_run(resume_id)
        store.set_status(resume_id, "running")
    else:
        run = store.create_run(cfg.model_dump(mode="json"), kind="continual",
                               name=cfg.name or f"{cfg.protocol}-{cfg.method}-s{cfg.seed}")
    T = len(build_protocol(cfg.protocol, cfg.setting, **cfg.protocol_options))
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), console=console, disable=not progress, transient=False)
    job = bar.add_task(f"{cfg.method} {run.id}", total=T * cfg.steps, info="")

    def emit(ev: dict) -> None:
        if ev["event"] == "step":
            bar.update(job, completed=ev["experience"] * cfg.steps + ev["step"],
                       info=f"experience {ev['experience'] + 1}/{T} loss {ev['loss']:.3f}")
            if ev["step"] % 50 == 0:
                store.heartbeat(run.id)
        else:
            store.update_summary(run.id, {"experience": ev["experience"],
                                          "acc_last_row": ev["acc"]})

    try:
        with bar:
            summary = train_continual(cfg, run, emit=emit, resume=bool(resume_id))
    except RunFailed as e:
        store.set_status(run.id, "failed", str(e))
        return run.id, "failed", {}
    except KeyboardInterrupt:
        store.set_status(run.id, "interrupted",
                         f"interrupted; resume with `seqmem continual --resume {run.id}`")
        raise
    except SeqmemError:
        store.set_status(run.id, "failed", "invalid configuration")
        raise
    except Exception as e:
        store.set_status(run.id, "failed", f"{type(e).__name__}: {e}")
        raise
    head = {k: summary[k] for k in ("protocol", "setting", "method", "mixer", "seed",
                                    "avg_acc", "bwt", "fwt", "forgetting", "lca", "elapsed_s")
            if k in summary}
    store.update_summary(run.id, head)
    store.set_status(run.id, "done")
    return run.id, "done", summary
