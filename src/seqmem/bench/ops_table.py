"""`seqmem bench --ops` and `--chunks`: the chunked ops alone, forward and backward.

`--ops`: every chunked op (`OPS`) at b = 4, t = 2048, h = 4, d = 64, float32 (quick: smaller),
timed in interleaved rounds at its default chunk length (`seqmem.ops.tuning.chunk_size`).
A row gives the median fwd+bwd time with its range over the rounds, tokens/s, GFLOP/s and the
roofline fraction: 3 x the forward's counted FLOPs (the model-flops convention: a backward
costs twice its forward) over the time, over the machine's matmul rate (`matmul_gflops`).
FLOPs are what PyTorch's FlopCounterMode counts (matrix products), so an op whose work is
elementwise (the selective scan) shows a small fraction by construction.

`--chunks`: each op at every chunk length of `tuning.CANDIDATES`, the lengths timed against
one another in interleaved rounds; the best (the smallest median) per op is reported and, with
`--write` (and in the full bench), saved for this machine (`tuning.save`), where
`chunk_size=None` finds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmem import ops
from seqmem.bench.config import BenchConfig
from seqmem.bench.measure import (
    count_flops,
    interleaved_rounds,
    machine,
    matmul_gflops,
    ms,
    thread_count,
    timing,
    write_rows,
)
from seqmem.errors import SeqmemError
from seqmem.ops import tuning


@dataclass(frozen=True)
class OpShapes:
    """b sequences of t tokens, h heads of width d (the selective scan: h * d channels and a
    state of `n_scan` per channel)."""

    b: int = 4
    t: int = 2048
    h: int = 4
    d: int = 64
    n_scan: int = 16


QUICK_OP_SHAPES = OpShapes(b=2, t=256, h=2, d=32)


@dataclass(frozen=True)
class OpCase:
    """One op on its inputs: `fn(chunk_size, *inputs)` is its output (differentiated as
    output.sum()); `tokens` per call."""

    op: str
    fn: Callable[..., Tensor]
    inputs: list[Tensor]
    tokens: int


def _heads(s: OpShapes, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    def r(*shape):
        return torch.randn(*shape, generator=gen)

    return r(s.b, s.t, s.h, s.d), F.normalize(r(s.b, s.t, s.h, s.d), dim=-1), \
        r(s.b, s.t, s.h, s.d)


def _gates(s: OpShapes, gen: torch.Generator, *shape) -> Tensor:
    """Forget gates in log space (logsigmoid, <= 0, mostly near 0 as trained ones are)."""
    return F.logsigmoid(torch.randn(s.b, s.t, s.h, *shape, generator=gen) + 3.0)


def _beta(s: OpShapes, gen: torch.Generator) -> Tensor:
    return torch.sigmoid(torch.randn(s.b, s.t, s.h, generator=gen))


def _la(c, q, k, v):
    return ops.linear_attention(q, k, v, chunk_size=c)[0]


def _gla(c, q, k, v, g):
    return ops.gla(q, k, v, g, chunk_size=c)[0]


def _delta(c, q, k, v, beta):
    return ops.delta_rule(q, k, v, beta=beta, chunk_size=c)[0]


def _gated_delta(c, q, k, v, g, beta):
    return ops.gated_delta_rule(q, k, v, g=g, beta=beta, chunk_size=c)[0]


def _case(op: str, s: OpShapes, gen: torch.Generator) -> OpCase:
    q, k, v = _heads(s, gen)
    if op == "linear_attention":
        fn, inputs = _la, [q, k, v]
    elif op == "retention":
        decay = torch.log1p(-torch.exp2(-5.0 - torch.arange(s.h, dtype=torch.float32)))

        def fn(c, q, k, v):
            return ops.retention(q, k, v, decay.to(q.dtype), chunk_size=c)[0]

        inputs = [q, k, v]
    elif op == "gla":
        fn, inputs = _gla, [q, k, v, _gates(s, gen, s.d)]
    elif op == "delta_rule":
        fn, inputs = _delta, [q, k, v, _beta(s, gen)]
    elif op == "gated_delta_rule":
        fn, inputs = _gated_delta, [q, k, v, _gates(s, gen), _beta(s, gen)]
    elif op in ("ssd", "ssd_signed"):
        f = ops.ssd if op == "ssd" else ops.ssd_signed

        def fn(c, x, a, B, C):
            return f(x, a, B, C, chunk_size=c)[0]

        inputs = [v, _gates(s, gen), k, q * s.d ** -0.5]
    elif op in ("selective_scan", "selective_scan_signed"):
        scan = ops.selective_scan if op == "selective_scan" else ops.selective_scan_signed
        D, n = s.h * s.d, s.n_scan

        def r(*shape):
            return torch.randn(*shape, generator=gen)

        def fn(c, u, delta, A, B, C):
            return scan(u, delta, A, B, C, delta_softplus=True, chunk_size=c)[0]

        inputs = [r(s.b, s.t, D), r(s.b, s.t, D) - 2.0, -torch.exp(0.5 * r(D, n)),
                  r(s.b, s.t, n), r(s.b, s.t, n)]
    else:
        raise SeqmemError(f"unknown op {op!r}; accepted: {', '.join(OPS)}")
    return OpCase(op, fn, [x.requires_grad_(True) for x in inputs], s.b * s.t)


#: The ops of the tables: every op `seqmem.ops.tuning` tunes.
OPS = tuning.TUNED


def build_cases(shapes: OpShapes, *, seed: int = 0, only: tuple[str, ...] = ()
                ) -> list[OpCase]:
    """One case per op of `OPS` (or of `only`), its inputs drawn from `seed`."""
    names = only or OPS
    unknown = [o for o in names if o not in OPS]
    if unknown:
        raise SeqmemError(f"unknown op {unknown[0]!r}; accepted: {', '.join(OPS)}")
    return [_case(op, shapes, torch.Generator().manual_seed(seed + i))
            for i, op in enumerate(names)]


def default_chunk(op: str) -> int | str:
    """The chunk length op runs at with chunk_size=None: the selective scans bound theirs by
    a working set alone unless a length is measured for this machine ("auto")."""
    if op.startswith("selective_scan"):
        return tuning.measured(op) or "auto"
    return tuning.chunk_size(op)


def fwd_bwd_call(case: OpCase, chunk_size: int | None) -> Callable[[], None]:
    """A closure running forward and backward (of the output's sum) of the case."""
    def run():
        for x in case.inputs:
            x.grad = None
        case.fn(chunk_size, *case.inputs).sum().backward()
        for x in case.inputs:
            x.grad = None

    return run


def forward_flops(case: OpCase, chunk_size: int | None) -> int:
    """FLOPs PyTorch counts in the case's forward (no autograd)."""
    with torch.no_grad():
        return count_flops(lambda: case.fn(chunk_size, *case.inputs))


def _with_threads(threads: int | None, fn: Callable[[], object]):
    with thread_count(threads):
        return fn()


def run_ops(shapes: OpShapes, *, rounds: int = 7, seed: int = 0, threads: int | None = 1,
            only: tuple[str, ...] = (), progress: Callable[[str], None] | None = None
            ) -> tuple[dict, list[dict]]:
    """(context, rows): every op's fwd+bwd at its default chunk length, the ops timed in
    interleaved rounds (module docstring)."""
    progress = progress or (lambda msg: None)

    def measure():
        cases = build_cases(shapes, seed=seed, only=only)
        progress("matmul rate")
        ctx = _context(shapes, rounds)
        progress(f"{len(cases)} ops in {rounds} interleaved rounds")
        times, calls = interleaved_rounds([fwd_bwd_call(c, None) for c in cases], rounds)
        rows = []
        for case, t_i, n_i in zip(cases, times, calls, strict=True):
            t = timing(t_i)
            flops = forward_flops(case, None)
            rate = 3 * flops / t.median / 1e9
            rows.append({
                "op": case.op, **shapes.__dict__, "chunk_size": default_chunk(case.op),
                "fwdbwd_ms": 1e3 * t.median, "fwdbwd_ms_low": 1e3 * t.low,
                "fwdbwd_ms_high": 1e3 * t.high, "rounds": rounds, "calls": n_i,
                "tok_s": case.tokens / t.median, "fwd_flops": flops, "gflop_s": rate,
                "roofline_frac": rate / ctx["matmul_gflops"],
                "spread": t.high / t.low if t.low > 0 else None,
            })
        return ctx, rows

    return _with_threads(threads, measure)


def run_chunks(shapes: OpShapes, *, rounds: int = 5, seed: int = 0, threads: int | None = 1,
               only: tuple[str, ...] = (), candidates: tuple[int, ...] | None = None,
               progress: Callable[[str], None] | None = None
               ) -> tuple[dict, list[dict], dict[str, int]]:
    """(context, rows, best): every op at every candidate chunk length, the lengths of one op
    timed against one another in interleaved rounds; `best[op]` the length of the smallest
    median fwd+bwd time. `candidates`: the chunk lengths (default `tuning.CANDIDATES`)."""
    progress = progress or (lambda msg: None)
    candidates = candidates or tuning.CANDIDATES

    def measure():
        cases = build_cases(shapes, seed=seed, only=only)
        ctx = _context(shapes, rounds, gflops=False)
        rows, best = [], {}
        for case in cases:
            progress(f"{case.op}: chunk lengths {', '.join(map(str, candidates))}")
            times, _ = interleaved_rounds([fwd_bwd_call(case, c) for c in candidates], rounds)
            stats = [timing(t) for t in times]
            fastest = min(range(len(candidates)), key=lambda j: stats[j].median)
            best[case.op] = candidates[fastest]
            for c, t in zip(candidates, stats, strict=True):
                rows.append({"op": case.op, **shapes.__dict__, "chunk_size": c,
                             "fwdbwd_ms": 1e3 * t.median, "fwdbwd_ms_low": 1e3 * t.low,
                             "fwdbwd_ms_high": 1e3 * t.high, "rounds": rounds,
                             "tok_s": case.tokens / t.median,
                             "vs_best": t.median / stats[fastest].median,
                             "best": c == best[case.op]})
        return ctx, rows, best

    return _with_threads(threads, measure)


def _context(shapes: OpShapes, rounds: int, *, gflops: bool = True) -> dict:
    ctx = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": machine(), "shapes": shapes.__dict__,
           "rounds": rounds, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "dtype": "float32"}
    if gflops:
        ctx["matmul_gflops"] = round(matmul_gflops(), 2)
    return ctx


# ---- outputs ----------------------------------------------------------------------------------
def _head(title: str, ctx: dict, command: str) -> list[str]:
    s = ctx["shapes"]
    return [f"# {title}", "", f"Regenerate with `{command}`.", "",
            f"Machine: {ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
            f"float32; b = {s['b']}, t = {s['t']}, h = {s['h']}, d = {s['d']} (the selective "
            f"scans: {s['h'] * s['d']} channels, state {s['n_scan']}); measured {ctx['date']}.",
            ""]


def _range(r: dict) -> str:
    return f"{ms(r['fwdbwd_ms'])} ({ms(r['fwdbwd_ms_low'])}-{ms(r['fwdbwd_ms_high'])})"


def ops_markdown(rows: list[dict], ctx: dict, *, command: str) -> str:
    """The op-level table with how to read it."""
    lines = [*_head("seqmem bench --ops", ctx, command),
        f"Matmul rate (the roofline): {ctx['matmul_gflops']} GFLOP/s.", "",
        "Forward and backward (of the output's sum) of each op at its default chunk length, "
        f"the ops timed in {ctx['rounds']} interleaved rounds: the median ms with its range. "
        "GFLOP/s = 3 x the forward's counted FLOPs (a backward costs twice its forward) over "
        "the time; roofline = that over the matmul rate. Counted FLOPs are matrix products, so "
        "an elementwise op (the selective scan) has a small fraction by construction.", "",
        "| op | chunk | fwd+bwd ms (range) | tokens/s | fwd GFLOP | GFLOP/s | roofline |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        roof = f"{100 * r['roofline_frac']:.1f} %" if r["fwd_flops"] else "no matmuls"
        lines.append(f"| {r['op']} | {r['chunk_size']} | {_range(r)} | {r['tok_s']:,.0f} | "
                     f"{r['fwd_flops'] / 1e9:.3g} | {r['gflop_s']:.3g} | {roof} |")
    return "\n".join(lines) + "\n"


def chunks_markdown(rows: list[dict], ctx: dict, best: dict[str, int], *, command: str,
                    saved: Path | None) -> str:
    """The chunk-length table with how to read it."""
    lines = [*_head("seqmem bench --chunks", ctx, command),
        "Forward and backward of each op at each chunk length, the lengths of one op timed "
        f"against one another in {ctx['rounds']} interleaved rounds: the median ms with its "
        "range, and the time over the best length's (1.00x: the best, marked *). "
        "`chunk_size=None` runs an op at this machine's best once it is saved "
        "(`seqmem bench --chunks --write`), else at the packaged default "
        "(`seqmem.ops.tuning.DEFAULTS`).", "",
        "| op | chunk | fwd+bwd ms (range) | tokens/s | vs best |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " *" if r["best"] else ""
        lines.append(f"| {r['op']} | {r['chunk_size']}{mark} | {_range(r)} | "
                     f"{r['tok_s']:,.0f} | {r['vs_best']:.2f}x |")
    lines += ["", "Best per op: " + ", ".join(f"{op} {c}" for op, c in best.items()) + "."]
    if saved is not None:
        lines += ["", f"Saved for this machine ({tuning.machine_key(ctx['threads'])}) in "
                  f"`{saved}`."]
    return "\n".join(lines) + "\n"


def ops_to(cfg: BenchConfig, out_dir: Path, *, command: str,
           progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, Path]]:
    """`run_ops` at the config's shapes, rounds (`repeats`), seed and threads; writes
    ops.jsonl, ops.csv and ops.md to out_dir."""
    shapes = QUICK_OP_SHAPES if cfg.shapes == "quick" else OpShapes()
    ctx, rows = run_ops(shapes, rounds=cfg.repeats, seed=cfg.seed, threads=cfg.threads,
                        progress=progress)
    return rows, write_rows(rows, ctx, out_dir, "ops", ops_markdown(rows, ctx, command=command))


def chunks_to(cfg: BenchConfig, out_dir: Path, *, command: str, write: bool,
              progress: Callable[[str], None] | None = None
              ) -> tuple[list[dict], dict[str, Path]]:
    """`run_chunks` at the config's shapes, rounds, seed and threads; writes chunks.jsonl,
    chunks.csv and chunks.md to out_dir, and with `write` the best lengths for this machine
    (`tuning.save`, under the thread count they were measured with)."""
    shapes = QUICK_OP_SHAPES if cfg.shapes == "quick" else OpShapes()
    ctx, rows, best = run_chunks(shapes, rounds=cfg.repeats, seed=cfg.seed,
                                 threads=cfg.threads, progress=progress)
    saved = tuning.save(best, threads=ctx["threads"]) if write else None
    ctx["saved"] = str(saved) if saved else None
    md = chunks_markdown(rows, ctx, best, command=command, saved=saved)
    return rows, write_rows(rows, ctx, out_dir, "chunks", md)
