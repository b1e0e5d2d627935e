"""`seqmem bench --compile`: what torch.compile gains on a training step, per mixer family.

One representative mixer per family (`FAMILIES`) in the model of the small-model table
(`seqmem.bench.small`: a 2-block residual SequenceModel on MQAR tokens, built as a run builds
it; one step = the training loop's loss of one batch, its backward and one AdamW step), twice:
eager, and with its blocks compiled as `train.compile: true` compiles them
(`seqmem.devices.compile_model`). Both models start from the same seed, so the first step's
loss of the compiled model must equal the eager one (the `same loss` column checks it, to
float32 rounding). Per mixer:

- first call: the seconds of the first step, compilation (tracing, AOT autograd, Inductor's
  C++ code generation) included for the compiled model, cold: with Inductor's on-disk caches
  off, as the first run of a model on a machine pays it (a later run of the same model and
  shapes finds much of it cached);
- steady state: the two steps timed against each other in interleaved rounds
  (`measure.interleaved_rounds`, after two unmeasured calls each), median step time, and
  tokens/s = batch x T / step time; `speedup` = compiled tokens/s over eager (above 1: the
  compiled step is faster);
- break-even: the steps after which the compilation has paid for itself, (first compiled -
  first eager) / (eager step - compiled step), when the compiled step is faster.

A mixer whose compilation (or compiled step) fails gets its row with the error's first line
instead of numbers; the table goes on.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from seqmem import mixers
from seqmem.bench.config import BenchConfig
from seqmem.bench.measure import (
    interleaved_rounds,
    ms,
    table_context,
    thread_count,
    timing,
    write_rows,
)
from seqmem.bench.small import SmallShapes, run_config
from seqmem.build import build_curriculum, build_model, build_optimizer, build_task
from seqmem.config import RunConfig
from seqmem.devices import compile_model
from seqmem.train.loop import batch_loss

#: one representative mixer per family -> the family, in the order of the table
FAMILIES: dict[str, str] = {
    "leaky_rnn": "RNN, learnable timescales",
    "gru": "gated RNN",
    "lstm": "LSTM",
    "plrnn": "piecewise-linear RNN",
    "s4d": "linear time-invariant SSM",
    "mamba": "selective SSM",
    "mamba2": "SSD",
    "linear_attn": "linear attention",
    "gla": "gated linear attention",
    "deltanet": "delta rule",
    "titans": "neural memory",
    "tcn": "temporal convolution",
    "attention": "softmax attention",
    "mlp": "baseline (no mixing)",
}
QUICK_MIXERS = ("mlp", "leaky_rnn")
COMPILE_SHAPES = SmallShapes(d_models=(64,), lengths=(64,))
QUICK_COMPILE_SHAPES = SmallShapes(d_models=(32,), lengths=(16,), batch=16)
LOSS_RTOL = 1e-4  # float32: a fused kernel sums in another order


def training_step(cfg: RunConfig, batch_size: int, *, compiled: bool, seed: int = 0
                  ) -> Callable[[], torch.Tensor]:
    """A closure running one training step of the run's model on one fixed batch, its model
    compiled or not, returning the step's loss (the model's initialisation and the batch
    depend only on the config and `seed`, so eager and compiled start equal)."""
    cur = build_curriculum(cfg)
    model = build_model(cfg, cur)
    if compiled:
        compile_model(model)
    task = build_task(cfg, cur)
    opt = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(seed)
    batch = task.sample(batch_size, generator=gen)
    heads = list(range(len(model.heads)))
    model.train()

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss, _ = batch_loss(model, task, batch, heads, gen)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def first_call(step: Callable[[], torch.Tensor]) -> tuple[float, float]:
    """(seconds, loss) of the first call of a step."""
    t0 = time.perf_counter()
    loss = float(step())
    return time.perf_counter() - t0, loss


def cold_compile():
    """A context in which torch.compile finds nothing in Inductor's on-disk caches (the FX
    graph cache and AOT autograd's), so that a first call pays the whole compilation."""
    import torch._functorch.config as functorch_config  # torch's own, loaded only here
    import torch._inductor.config as inductor_config

    stack = contextlib.ExitStack()
    stack.enter_context(inductor_config.patch(fx_graph_cache=False))
    stack.enter_context(functorch_config.patch(enable_autograd_cache=False))
    return stack


def error_line(e: BaseException) -> str:
    """The first line of an error, with its type: what a failure row shows."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def compile_row(name: str, shapes: SmallShapes, *, rounds: int, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> dict:
    """One row of the table: eager vs compiled training step of mixer `name` (module
    docstring); on a failure, the row with `error` and no timings. Dynamo's caches are
    cleared first: every model shares `SequenceModel.features`'s code, whose compiled
    versions would otherwise pile up to torch's recompile limit and fall back to eager."""
    progress = progress or (lambda msg: None)
    torch._dynamo.reset()
    d, T = shapes.d_models[0], shapes.lengths[0]
    cfg = run_config(name, d, T, shapes, seed)
    row: dict = {"mixer": name, "family": FAMILIES.get(name, ""),
                 "form": mixers.get(name).modes[0], "d_model": d, "T": T,
                 "batch": shapes.batch, "rounds": rounds}
    try:
        eager = training_step(cfg, shapes.batch, compiled=False, seed=seed)
        progress(f"compile {name}: eager first step")
        row["eager_first_s"], row["eager_loss"] = first_call(eager)
        progress(f"compile {name}: compiling")
        compiled = training_step(cfg, shapes.batch, compiled=True, seed=seed)
        with cold_compile():
            row["compiled_first_s"], row["compiled_loss"] = first_call(compiled)
        progress(f"compile {name}: {rounds} interleaved rounds")
        times, _ = interleaved_rounds([eager, compiled], rounds, warmup=2)
    except Exception as e:  # torch's compiler raises many kinds; the row says which
        row["error"] = error_line(e)
        return row
    te, tc = timing(times[0]), timing(times[1])
    tokens = shapes.batch * T
    gain = te.median - tc.median
    row.update({
        "eager_step_ms": 1e3 * te.median, "compiled_step_ms": 1e3 * tc.median,
        "eager_step_ms_low": 1e3 * te.low, "eager_step_ms_high": 1e3 * te.high,
        "compiled_step_ms_low": 1e3 * tc.low, "compiled_step_ms_high": 1e3 * tc.high,
        "eager_tok_s": tokens / te.median, "compiled_tok_s": tokens / tc.median,
        "speedup": te.median / tc.median,
        "first_ratio": row["compiled_first_s"] / row["eager_first_s"],
        "same_loss": abs(row["compiled_loss"] - row["eager_loss"])
        <= LOSS_RTOL * max(1.0, abs(row["eager_loss"])),
        "break_even_steps": (row["compiled_first_s"] - row["eager_first_s"]) / gain
        if gain > 0 else None,
        "error": None,
    })
    return row


def run_compile(shapes: SmallShapes = COMPILE_SHAPES, *, names: tuple[str, ...] = (),
                rounds: int = 3, seed: int = 0, threads: int | None = 1,
                progress: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """(context, rows): the compile table of `names` (default: one mixer per family,
    `FAMILIES`) at the first d_model and T of `shapes`, in this process. The context records
    the load average before and after, since a shared machine's load moves every timing."""
    names = tuple(dict.fromkeys(names or FAMILIES))
    for n in names:
        mixers.get(n)  # unknown names: a one-line error before anything runs
    shapes = replace(shapes, d_models=shapes.d_models[:1], lengths=shapes.lengths[:1])
    rows = []
    with thread_count(threads):
        # the compiler's one-time start-up in a process (its imports, the C++ toolchain's
        # checks) is paid here, not by the first row
        torch.compile(lambda x: x * 2.0, dynamic=False)(torch.ones(2))
        ctx = table_context(shapes, rounds)
        ctx["load_before"] = list(os.getloadavg())
        for n in names:
            rows.append(compile_row(n, shapes, rounds=rounds, seed=seed, progress=progress))
        ctx["load_after"] = list(os.getloadavg())
    return ctx, rows


def _load(v: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in v)


def _range(r: dict, which: str) -> str:
    return (f"{ms(r[f'{which}_step_ms'])} ({ms(r[f'{which}_step_ms_low'])}-"
            f"{ms(r[f'{which}_step_ms_high'])})")


def compile_markdown(rows: list[dict], ctx: dict, *, command: str) -> str:
    """The compile table with how to read it."""
    s = ctx["shapes"]
    lines = [
        "# seqmem bench --compile", "", f"Regenerate with `{command}`.", "",
        f"Machine: {ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
        f"float32; measured {ctx['date']}; load average (1/5/15 min) "
        f"{_load(ctx['load_before'])} before, {_load(ctx['load_after'])} after (a shared "
        "machine: other work ran beside it).", "",
        f"One training step of a {s['n_layers']}-block residual SequenceModel (d_model "
        f"{s['d_models'][0]}, MQAR tokens, vocabulary {s['vocab']}, batch {s['batch']}, T "
        f"{s['lengths'][0]}; the loop's loss, backward, one AdamW step), one mixer per family "
        "in its default form, eager and with its blocks compiled as `train.compile: true` "
        "does (`seqmem.devices.compile_model`: torch.compile of `model.features`, "
        "dynamic=False). First step: seconds of the first call, compilation included. "
        f"Steady state: {ctx['rounds']} interleaved rounds after two unmeasured calls each, "
        "median step ms (min-max over the rounds) and tokens/s. Speedup: compiled tokens/s "
        "over eager (above 1: compiled is faster). Break-even: steps after which the compile "
        "time has paid off. Same loss: the first step's loss of both models (same seed) "
        "agrees to 1e-4.", "",
        "| mixer | family | form | first step eager s | first step compiled s | "
        "step ms eager | step ms compiled | tokens/s eager | tokens/s compiled | speedup | "
        "break-even steps | same loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        first = f"{r['eager_first_s']:.2f}" if "eager_first_s" in r else ""
        head = f"| {r['mixer']} | {r['family']} | {r['form']} | {first} | "
        if r.get("error"):
            lines.append(head + f"failed: {r['error'].replace('|', '/')} |" + " |" * 7)
            continue
        be = f"{r['break_even_steps']:,.0f}" if r["break_even_steps"] is not None else "never"
        lines.append(
            head + f"{r['compiled_first_s']:.1f} | {_range(r, 'eager')} | "
            f"{_range(r, 'compiled')} | {r['eager_tok_s']:,.0f} | "
            f"{r['compiled_tok_s']:,.0f} | {r['speedup']:.2f}x | {be} | "
            f"{'yes' if r['same_loss'] else 'NO'} |")
    ok = [r for r in rows if not r.get("error")]
    wins = [r["mixer"] for r in ok if r["speedup"] > 1.05]
    losses = [r["mixer"] for r in ok if r["speedup"] < 0.95]
    failed = [r["mixer"] for r in rows if r.get("error")]
    lines += ["", f"Faster compiled (speedup > 1.05): {', '.join(wins) or 'none'}. Slower "
              f"compiled (< 0.95): {', '.join(losses) or 'none'}. Failed to compile: "
              f"{', '.join(failed) or 'none'}. `train.compile` is false by default: a run "
              "pays the first-step compile time once per model, which the break-even column "
              "weighs against its number of steps."]
    return "\n".join(lines) + "\n"


def compile_to(cfg: BenchConfig, out_dir: Path, *, command: str,
               progress: Callable[[str], None] | None = None
               ) -> tuple[list[dict], dict[str, Path]]:
    """`run_compile` for the config's mixers (empty: one per family; quick shapes: the two of
    QUICK_MIXERS, short), rounds (`repeats`), seed and threads; writes compile.jsonl,
    compile.csv and compile.md to out_dir."""
    quick = cfg.shapes == "quick"
    names = cfg.mixers or (QUICK_MIXERS if quick else ())
    shapes = QUICK_COMPILE_SHAPES if quick else COMPILE_SHAPES
    ctx, rows = run_compile(shapes, names=names, rounds=cfg.repeats, seed=cfg.seed,
                            threads=cfg.threads, progress=progress)
    md = compile_markdown(rows, ctx, command=command)
    return rows, write_rows(rows, ctx, out_dir, "compile", md, fields=("mixer",))
