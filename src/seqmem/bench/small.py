"""`seqmem bench --small`: end-to-end training tokens/s of small models, every mixer.

The regime of the synthetic-task literature: a SequenceModel built as a run builds it
(`seqmem.build.build_model` from a run config: token inputs of an MQAR-like vocabulary, two
residual blocks of the mixer in its default form), batch 64, T tokens; one training step is the
training loop's own loss of one batch (`seqmem.train.loop.batch_loss`, cross-entropy of its
heads), its backward and one AdamW step (`seqmem.build.build_optimizer`). At each (d_model, T)
every mixer's step is timed against the others' in interleaved rounds; attention (max_len = T)
is the reference row, and `vs attention` is a mixer's tokens/s over attention's (above 1:
faster than attention). A mixer whose warm-up step exceeds the budget is not timed at that
length or longer ones, with a note.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
from seqmem.build import build_curriculum, build_model, build_optimizer, build_task
from seqmem.config import RunConfig, load_config
from seqmem.train.loop import batch_loss

REFERENCE = "attention"


@dataclass(frozen=True)
class SmallShapes:
    """The model widths and sequence lengths of the table, and the batch."""

    d_models: tuple[int, ...] = (64, 128)
    lengths: tuple[int, ...] = (64, 256, 512, 1024, 2048)
    batch: int = 64
    n_layers: int = 2
    vocab: int = 64


QUICK_SMALL = SmallShapes(d_models=(64,), lengths=(64, 256, 512))


def run_config(mixer: str, d_model: int, T: int, shapes: SmallShapes, seed: int = 0
               ) -> RunConfig:
    """The run config of one model of the table: MQAR at length T (its vocabulary sets the
    embedding and the head), the mixer (attention with max_len = T) in residual blocks."""
    pairs = max(1, min(8, T // 8))
    flags = ["task.kind=mqar", f"task.seq_len={T}", f"task.n_pairs={pairs}",
             f"task.vocab_size={shapes.vocab}", f"model.mixer.kind={mixer}",
             f"model.d_model={d_model}", f"model.n_layers={shapes.n_layers}",
             "model.block=residual", f"seed={seed}"]
    if mixer == REFERENCE:
        flags.append(f"model.mixer.max_len={T}")
    return load_config(None, flags, schema=RunConfig)


def training_step(cfg: RunConfig, batch_size: int, seed: int = 0) -> Callable[[], None]:
    """A closure running one training step of the run's model on one fixed batch."""
    cur = build_curriculum(cfg)
    model = build_model(cfg, cur)
    task = build_task(cfg, cur)
    opt = build_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(seed)
    batch = task.sample(batch_size, generator=gen)
    heads = list(range(len(model.heads)))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = batch_loss(model, task, batch, heads, gen)
        loss.backward()
        opt.step()

    return step


def run_small(shapes: SmallShapes, *, names: tuple[str, ...] = (), rounds: int = 3,
              budget_s: float = 20.0, seed: int = 0, threads: int | None = 1,
              progress: Callable[[str], None] | None = None
              ) -> tuple[dict, list[dict], list[str]]:
    """(context, rows, skipped): training tokens/s of every mixer (or `names`) and attention
    at each d_model x T (module docstring)."""
    progress = progress or (lambda msg: None)
    names = tuple(dict.fromkeys((REFERENCE, *(names or mixers.names()))))
    for n in names:
        mixers.get(n)  # unknown names: a one-line error before anything runs
    rows, skipped = [], []
    with thread_count(threads):
        ctx = table_context(shapes, rounds)
        for d in shapes.d_models:
            alive = list(names)
            for T in shapes.lengths:
                steps, kept = [], []
                for n in alive:
                    progress(f"small d_model={d} T={T}: {n} warm-up")
                    try:
                        step = training_step(run_config(n, d, T, shapes, seed), shapes.batch,
                                             seed)
                        t0 = time.perf_counter()
                        step()
                        first = time.perf_counter() - t0
                    except (RuntimeError, MemoryError, ValueError) as e:
                        skipped.append(f"{n} d_model={d} from T={T}: "
                                       f"{str(e).splitlines()[0][:120]}")
                        continue
                    if first > budget_s:
                        skipped.append(f"{n} d_model={d} from T={T}: the warm-up step took "
                                       f"{first:.1f} s > budget {budget_s:g} s")
                        continue
                    steps.append((step, first))
                    kept.append(n)
                alive = kept
                if not kept:
                    break
                progress(f"small d_model={d} T={T}: {len(kept)} mixers, {rounds} rounds")
                times, _ = interleaved_rounds([s for s, _ in steps], rounds, warmup=0,
                                              per_call=[f for _, f in steps])
                tokens = shapes.batch * T
                here = {n: timing(t) for n, t in zip(kept, times, strict=True)}
                ref = here.get(REFERENCE)
                for n, t in here.items():
                    tok_s = tokens / t.median
                    rows.append({
                        "mixer": n, "form": mixers.get(n).modes[0], "d_model": d, "T": T,
                        "batch": shapes.batch, "step_ms": 1e3 * t.median,
                        "step_ms_low": 1e3 * t.low, "step_ms_high": 1e3 * t.high,
                        "tok_s": tok_s, "rounds": rounds,
                        "vs_attention": tok_s / (tokens / ref.median) if ref else None,
                        "spread": t.high / t.low if t.low > 0 else None,
                    })
                del steps
    return ctx, rows, skipped


def small_markdown(rows: list[dict], skipped: list[str], ctx: dict, *, command: str) -> str:
    """The small-model table, one section per d_model, with how to read it."""
    s = ctx["shapes"]
    lines = [
        "# seqmem bench --small", "", f"Regenerate with `{command}`.", "",
        f"Machine: {ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
        f"float32; measured {ctx['date']}.", "",
        f"Training tokens/s of a {s['n_layers']}-block residual SequenceModel on token inputs "
        f"(vocabulary {s['vocab']}, MQAR), batch {s['batch']}: one step = the training loop's "
        "cross-entropy of one batch, its backward and one AdamW step, every mixer in its "
        f"default form. At each d_model and T the mixers ran in {ctx['rounds']} interleaved "
        "rounds: median step time with its range. `vs attention` = the mixer's tokens/s over "
        "attention's (max_len = T) at the same d_model and T: above 1, faster than attention.",
    ]
    for d in dict.fromkeys(r["d_model"] for r in rows):
        lines += ["", f"## d_model {d}", "",
                  "| mixer | form | T | step ms (range) | tokens/s | vs attention |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            if r["d_model"] != d:
                continue
            ratio = f"{r['vs_attention']:.2f}x" if r["vs_attention"] is not None else ""
            lines.append(f"| {r['mixer']} | {r['form']} | {r['T']} | {ms(r['step_ms'])} "
                         f"({ms(r['step_ms_low'])}-{ms(r['step_ms_high'])}) | "
                         f"{r['tok_s']:,.0f} | {ratio} |")
    if skipped:
        lines += ["", "Not measured:", "", *(f"- {x}" for x in skipped)]
    return "\n".join(lines) + "\n"


def small_to(cfg: BenchConfig, out_dir: Path, *, command: str,
             progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, Path]]:
    """`run_small` for the config's mixers (empty: all) at its shapes, rounds (`repeats`),
    budget, seed and threads; writes small.jsonl, small.csv and small.md to out_dir."""
    shapes = QUICK_SMALL if cfg.shapes == "quick" else SmallShapes()
    ctx, rows, skipped = run_small(shapes, names=cfg.mixers, rounds=cfg.repeats,
                                   budget_s=cfg.budget_s, seed=cfg.seed, threads=cfg.threads,
                                   progress=progress)
    ctx["skipped"] = skipped
    md = small_markdown(rows, skipped, ctx, command=command)
    return rows, write_rows(rows, ctx, out_dir, "small", md)
