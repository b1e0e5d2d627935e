"""`seqmem bench`: every chosen mixer x form x sequence length, against PyTorch's own fused
RNN, GRU and LSTM and the machine's matmul rate, measured side by side in one process.

Rows go to JSON lines and CSV (with the torch version, thread count and machine), a log-log
plot of fwd+bwd tokens/s against T, and a Markdown table (benchmarks/README.md for the full
run). At each length every subject is timed against the others in interleaved rounds
(`measure.interleaved_rounds`), so that all share the machine's load. A form whose single
warm-up run exceeds `budget_s` is measured once at that length and skipped at longer ones
(recorded as such), so a slow reference loop cannot stall the bench. `bench_to` also runs the
other tables (`BenchConfig.parts`: `ops_table`, `small`, `decode`).

The grid measures on `cfg.device` (`seqmem.devices.resolve_device`): modules and inputs live
there (inputs drawn on the CPU by the bench's generator, then moved, so every device sees the
same numbers), every timed call waits for the device (`measure.synchronize`), peak memory is
the device allocator's, and the roofline is the device's matmul rate. The other parts measure
on the CPU and refuse another device in one line.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from seqmem import mixers
from seqmem.bench.compile_table import compile_to
from seqmem.bench.config import PARTS, BenchConfig
from seqmem.bench.decode import decode_to
from seqmem.bench.grid import grid_to
from seqmem.bench.kernels import kernels_to
from seqmem.bench.measure import (
    Timing,
    count_flops,
    fwd_bwd,
    fwd_only,
    interleaved_rounds,
    machine,
    matmul_gflops,
    peak_memory_mib,
    time_it,
    timing,
    write_rows,
)
from seqmem.bench.ops_table import chunks_to, ops_to
from seqmem.bench.small import small_to
from seqmem.build import seeded
from seqmem.devices import resolve_device
from seqmem.errors import SeqmemError

TORCH_REFERENCES = {"torch.nn.RNN": nn.RNN, "torch.nn.GRU": nn.GRU, "torch.nn.LSTM": nn.LSTM}


def available_mib() -> float | None:
    """MemAvailable from /proc/meminfo in MiB (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def predicted_peak_mib(history: list[tuple[int, float]], T: int) -> float | None:
    """Peak memory at length T extrapolated from the last two measured (T, peak MiB) points
    as a power law peak ~ T^e, the exponent e taken from them and clamped to [1, 2] (linear
    to quadratic); None with fewer than two points."""
    pts = [(t, p) for t, p in history if p is not None]
    if len(pts) < 2:
        return None
    (t1, p1), (t2, p2) = pts[-2:]
    p1, p2 = max(p1, 1.0), max(p2, 1.0)
    e = min(2.0, max(1.0, math.log(p2 / p1) / math.log(t2 / t1))) if t2 > t1 else 2.0
    return p2 * (T / t2) ** e


SPREAD_LIMIT = 1.5  # slowest / fastest of a point's repeated runs above this: not to be trusted


def spread(*timings: Timing | None) -> float | None:
    """The widest max/min ratio of the repeated runs' times (forward and fwd+bwd), None where
    a point ran once (nothing to compare)."""
    ratios = [t.high / t.low for t in timings if t is not None and t.n > 1 and t.low > 0]
    return max(ratios) if ratios else None


def unsteady(rows: list[dict], limit: float = SPREAD_LIMIT) -> list[str]:
    """One line per row whose repeated runs differ by more than `limit` (max/min): its
    median is not to be trusted (a loaded machine, a thread pool waiting, a warm-up that did
    not warm up); re-measure it on a quiet machine or with more repeats."""
    return [f"{r['subject']} [{r['form']}] T={r['T']}: repeated runs differ {r['spread']:.1f}x "
            f"(max/min) > {limit:g}x: not to be trusted"
            for r in rows if r.get("spread") is not None and r["spread"] > limit]


def _subjects(cfg: BenchConfig) -> Iterator[tuple[str, str, Callable[[], nn.Module], Callable]]:
    """(name, form, build, call) for every mixer form and torch reference."""
    names = cfg.mixers or tuple(mixers.names())
    for name in names:
        cls = mixers.get(name)  # unknown names: a one-line error
        for form in cls.modes:
            if cfg.forms == ("default",) and form != cls.modes[0]:
                continue  # "default": each mixer's training form (its first mode) only
            if cfg.forms and cfg.forms != ("default",) and form not in cfg.forms:
                continue
            yield (name, form, lambda n=name: mixers.build(n, cfg.d_model),
                   lambda m, x, f=form: m(x, mode=f)[0])
    for ref in cfg.references:
        if ref not in TORCH_REFERENCES:
            raise SeqmemError(f"unknown reference {ref!r}; accepted: "
                              f"{', '.join(TORCH_REFERENCES)}")
        yield (ref, "fused", lambda r=ref: TORCH_REFERENCES[r](cfg.d_model, cfg.d_model,
                                                               batch_first=True),
               lambda m, x: m(x)[0])


def _flops_per_token(module, call, cfg: BenchConfig, T: int, gen, device="cpu") -> float:
    """fwd+bwd FLOPs per token at length T: counted directly up to 2048 tokens per sequence
    and for mixers whose state grows (attention's span, RAT's chunks change the cost with T);
    above, extrapolated from counts at 1024 and 2048 by flops(T) = a T + b T^2 (exact for
    linear-time mixers), unless the fit has b < 0: a cost that does not vanish with T (lssl's
    squarings of its transition, say) or grows slower than T, where the fit would run
    negative at long T, so it is counted directly."""

    def at(t):
        x = torch.randn(1, t, cfg.d_model, generator=gen).to(device)
        return count_flops(fwd_bwd(module, x, call))

    if T <= 2048 or getattr(module, "state_grows", False):
        # cache mixers (attention, rat) change cost with T at their span: counted directly
        return at(T) / T
    f1, f2 = at(1024), at(2048)
    b = (f2 - 2 * f1) / (2048**2 - 2 * 1024**2)
    if b < 0:  # not of the form a T + b T^2 with b >= 0: count it
        return at(T) / T
    a = (f1 - b * 1024**2) / 1024
    return (a * T + b * T * T) / T


def _step_ms(module, form, cfg: BenchConfig, T: int, gen, device="cpu") -> float | None:
    """Median ms of one `step` from the state after a prefill of T tokens (decode latency)."""
    if not isinstance(module, mixers.Mixer):
        return None
    x = torch.randn(1, T, cfg.d_model, generator=gen).to(device)
    with torch.no_grad():
        _, state = module(x, mode=form)
        x_t = torch.randn(1, cfg.d_model, generator=gen).to(device)
        t = time_it(lambda: module.step(x_t, state), repeats=cfg.step_repeats, warmup=2,
                    device=device)
    return t.median * 1e3


def _newton_iterations(module, x) -> int:
    """The Newton iterations the mixer needs on x (one more no-grad forward)."""
    with torch.no_grad():
        return module.newton(x)[2].iterations


def run_bench(cfg: BenchConfig, *, progress: Callable[[str], None] | None = None,
              on_row: Callable[[dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Measure every subject x length; returns (context, rows); `context["skipped"]` lists
    what was not measured and why. `on_row` receives each row as it is measured. A length
    whose peak memory, extrapolated from the shorter ones, would pass the memory limit is not
    run (the OS would kill the process), nor are longer ones."""
    progress = progress or (lambda msg: None)
    device = resolve_device(cfg.device)
    limit = cfg.memory_limit_mib
    if limit is None:
        avail = device_mib(device) if device.type == "cuda" else available_mib()
        limit = 0.6 * avail if avail else None
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _measure_all(cfg, limit, progress, on_row, device)
    finally:
        torch.set_num_threads(threads)  # the process's own setting, for what runs next


def device_mib(device: torch.device) -> float:
    """The memory of a CUDA device (MiB)."""
    return torch.cuda.get_device_properties(device).total_memory / 2**20


def _measure_all(cfg: BenchConfig, limit: float | None, progress: Callable[[str], None],
                 on_row: Callable[[dict], None] | None, device: torch.device
                 ) -> tuple[dict, list[dict]]:
    """Every subject at each length in turn: at each length the subjects still running are
    warmed up (the budget probe), then timed together in interleaved rounds (fwd+bwd, then
    forward), so that they share the machine's load; rows come back in subject order."""
    gen = torch.Generator().manual_seed(cfg.seed)
    skipped: list[str] = []
    subjects = list(_subjects(cfg))  # unknown names fail before anything is measured
    progress("matmul rate")
    ctx = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": machine(),
           "device": _device_name(device),
           "matmul_gflops": round(matmul_gflops(device=device), 2), "batch": cfg.batch,
           "d_model": cfg.d_model, "dtype": "float32",
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "skipped": skipped,
           "timing": f"interleaved rounds ({cfg.repeats} per length)"}
    modules = []
    for i, (_, _, build, _) in enumerate(subjects):
        with seeded(cfg.seed + i):  # the module's initial weights
            modules.append(build().to(device))
    history: list[list[tuple[int, float | None]]] = [[] for _ in subjects]
    alive = set(range(len(subjects)))
    rows: list[tuple[int, dict]] = []
    for T in cfg.lengths:
        for i in sorted(alive):
            name, form = subjects[i][:2]
            guess = predicted_peak_mib(history[i], T)
            if limit is not None and guess is not None and guess > limit:
                skipped.append(f"{name} [{form}] from T={T}: about {guess:,.0f} MiB expected "
                               f"(from the shorter lengths) > limit {limit:,.0f} MiB")
                alive.discard(i)
        if not alive:
            break
        # one input for all, drawn on the CPU (the generator's device), then moved
        x = torch.randn(cfg.batch, T, cfg.d_model, generator=gen).to(device)
        tokens = cfg.batch * T
        runs, first = {}, {}
        for i in sorted(alive):
            name, form, _, call = subjects[i]
            progress(f"{name} [{form}] T={T}: warm-up")
            run = fwd_bwd(modules[i], x, call)
            t0 = time.perf_counter()
            try:
                run()  # the warm-up, also the budget probe
            except (RuntimeError, MemoryError) as e:  # e.g. out of memory at a long T
                skipped.append(f"{name} [{form}] T={T}: {str(e).splitlines()[0][:120]}")
                alive.discard(i)
                continue
            runs[i], first[i] = run, time.perf_counter() - t0
        steady = [i for i in runs if first[i] <= cfg.budget_s]
        progress(f"T={T}: {len(steady)} subject(s) in {cfg.repeats} interleaved rounds")
        tb, tf = {}, {}
        if steady:
            fb_times, _ = interleaved_rounds([runs[i] for i in steady], cfg.repeats, warmup=0,
                                             per_call=[first[i] for i in steady])
            fwds = [fwd_only(modules[i], x, subjects[i][3]) for i in steady]
            # a forward costs about a third of its fwd+bwd: no calibration runs at long T
            f_times, _ = interleaved_rounds(
                fwds, cfg.repeats, warmup=1,
                per_call=[statistics.median(fb_times[j]) / 3 for j in range(len(steady))])
            for j, i in enumerate(steady):
                tb[i], tf[i] = timing(fb_times[j]), timing(f_times[j])
        for i in runs:
            name, form, _, call = subjects[i]
            module, slow = modules[i], i not in tb
            if slow:  # measured once: one forward, beside the warm-up's fwd+bwd
                tf[i] = time_it(fwd_only(module, x, call), repeats=1, warmup=0, device=device)
            fb_median = tb[i].median if not slow else first[i]
            flops = _flops_per_token(module, call, cfg, T, gen, device)
            row = {
                "subject": name, "form": form, "T": T, "batch": cfg.batch,
                "d_model": cfg.d_model,
                "fwd_tok_s": tokens / tf[i].median,
                "fwd_tok_s_low": tokens / tf[i].high, "fwd_tok_s_high": tokens / tf[i].low,
                "fwdbwd_tok_s": tokens / fb_median,
                "fwdbwd_tok_s_low": tokens / (tb[i].high if not slow else first[i]),
                "fwdbwd_tok_s_high": tokens / (tb[i].low if not slow else first[i]),
                "runs": 1 if slow else cfg.repeats,
                "spread": spread(tf[i], tb.get(i)),
                "iterations": _newton_iterations(module, x) if form == "newton" else None,
                "step_ms": _step_ms(module, form, cfg, T, gen, device),
                "peak_mib": peak_memory_mib(runs[i], device) if cfg.memory else None,
                "flops_per_token": flops,
                "roofline_frac": flops * tokens / fb_median / (ctx["matmul_gflops"] * 1e9),
                **{k: ctx[k] for k in ("torch", "threads", "machine", "device")},
            }
            rows.append((i, row))
            history[i].append((T, row["peak_mib"]))
            if on_row is not None:
                on_row(row)
            if slow:
                skipped.append(f"{name} [{form}] beyond T={T}: one fwd+bwd took "
                               f"{first[i]:.1f} s > budget {cfg.budget_s:g} s")
                alive.discard(i)
        del runs, x
    rows.sort(key=lambda ir: ir[0])  # stable: each subject's lengths in order
    return ctx, [r for _, r in rows]


def bench_to(cfg: BenchConfig, out_dir: str | Path, *, command: str,
             progress: Callable[[str], None] | None = None, readme: bool = False
             ) -> tuple[dict, list[dict], dict[str, Path]]:
    """Run the bench's parts (`cfg.parts`; empty: all of them, the full bench) and write their
    outputs to `out_dir`: the mixer grid's bench.jsonl/csv/md/png (and README.md if
    `readme`), every row also to bench.partial.jsonl as it is measured, so a killed bench
    keeps them (a bench that measured nothing leaves no partial file); then ops, chunks, small
    and decode .jsonl/.csv/.md. The chunk lengths are saved for this machine with
    `cfg.write_chunks` (None: in the full bench). Returns (context, grid rows, paths); a
    bench without the grid has context["kind"] == "parts", and context["pages"] lists the
    Markdown page of every part but the grid."""
    parts = cfg.parts or PARTS
    full = not cfg.parts
    on_device = ("grid", "kernels")  # the parts that measure on another device than the CPU
    if resolve_device(cfg.device).type != "cpu" and not set(parts) <= set(on_device):
        raise SeqmemError(f"bench parts {', '.join(p for p in parts if p not in on_device)} "
                          f"measure on the CPU only; device {cfg.device!r} is accepted by the "
                          f"grid (--quick, --mixers, --forms, --lengths, ...) and --kernels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx: dict = {"kind": "parts", "skipped": [], "pages": []}
    rows: list[dict] = []
    paths: dict[str, Path] = {}
    if "grid" in parts:
        ctx, rows, paths = _grid_to(cfg, out, command=command, progress=progress, readme=readme)
        ctx["pages"] = []
    write = cfg.write_chunks if cfg.write_chunks is not None else full
    runners = {
        "ops": lambda: ops_to(cfg, out, command=command, progress=progress),
        "chunks": lambda: chunks_to(cfg, out, command=command, write=write, progress=progress),
        "small": lambda: small_to(cfg, out, command=command, progress=progress),
        "decode": lambda: decode_to(cfg, out, command=command, progress=progress),
        "grid2d": lambda: grid_to(cfg, out, command=command, progress=progress),
        "compile": lambda: compile_to(cfg, out, command=command, progress=progress),
        "kernels": lambda: kernels_to(cfg, out, command=command, progress=progress),
    }
    for part in parts:
        if part == "grid":
            continue
        _, written = runners[part]()
        paths.update({f"{part}.{k}": p for k, p in written.items()})
        ctx["pages"].append(str(written["md"]))
    return ctx, rows, paths


def _device_name(device: torch.device) -> str:
    """The device measured on, as the tables state it: cpu, or e.g. "cuda:0 (NVIDIA H100)"."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def _grid_to(cfg: BenchConfig, out: Path, *, command: str,
             progress: Callable[[str], None] | None, readme: bool
             ) -> tuple[dict, list[dict], dict[str, Path]]:
    partial = out / "bench.partial.jsonl"
    partial.write_text("")

    def keep(row: dict) -> None:
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")

    try:
        ctx, rows = run_bench(cfg, progress=progress, on_row=keep)
    except BaseException:
        if partial.stat().st_size == 0:
            partial.unlink()
        raise
    partial.unlink()
    paths = write_outputs(ctx, rows, out, skipped=ctx["skipped"], command=command)
    if readme:
        (out / "README.md").write_text(paths["md"].read_text())
    return ctx, rows, paths


# ---- outputs ----------------------------------------------------------------------------------
COLUMNS = ("subject", "form", "T", "fwdbwd_tok_s", "fwd_tok_s", "step_ms", "peak_mib",
           "roofline_frac", "spread")


def _fmt(key: str, v) -> str:
    if v is None:
        return ""
    if key.endswith("tok_s"):
        return f"{v:,.0f}"
    if key == "roofline_frac":
        return f"{100 * v:.1f} %"
    if key == "spread":  # max/min of the repeated runs; "!" marks a row not to be trusted
        return f"{v:.2f}x" + (" !" if v > SPREAD_LIMIT else "")
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(k, r.get(k)) for k in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def ratios(rows: list[dict]) -> list[str]:
    """fwd+bwd throughput of each RNN mixer relative to PyTorch's fused counterpart, per T."""
    pairs = {"leaky_rnn": "torch.nn.RNN", "elman": "torch.nn.RNN", "gru": "torch.nn.GRU",
             "lstm": "torch.nn.LSTM"}
    by = {(r["subject"], r["form"], r["T"]): r for r in rows}
    out = []
    for r in rows:
        ref = pairs.get(r["subject"])
        other = by.get((ref, "fused", r["T"])) if ref else None
        if other:
            out.append(f"{r['subject']} [{r['form']}] / {ref} at T={r['T']}: "
                       f"{r['fwdbwd_tok_s'] / other['fwdbwd_tok_s']:.2f}x")
    return out


def write_outputs(ctx: dict, rows: list[dict], out_dir: str | Path, *, skipped: list[str],
                  command: str) -> dict[str, Path]:
    """bench.jsonl, bench.csv, bench.png and bench.md in out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "bench.png"
    _plot(rows, png, ctx)
    lines = [
        "# seqmem bench", "",
        f"Regenerate with `{command}`.", "",
        f"Machine: {ctx['machine']}; device {ctx.get('device', 'cpu')}; torch {ctx['torch']}, "
        f"{ctx['threads']} thread(s); "
        f"float32, batch {ctx['batch']}, d_model {ctx['d_model']}; measured {ctx['date']}.",
        f"Matmul rate (the roofline): {ctx['matmul_gflops']} GFLOP/s.", "",
        "Throughput in tokens/s (median of the runs; fwd+bwd = forward and backward of the sum "
        "of outputs); step_ms: one decode step after a prefill of T tokens; peak_mib: peak "
        "resident memory of one fwd+bwd; roofline: counted matmul FLOPs per token x fwd+bwd "
        "tokens/s over the matmul rate; spread: slowest over fastest of the repeated runs "
        f"(forward or fwd+bwd, whichever is wider), marked ! above {SPREAD_LIMIT:g}x: such a "
        "row's median is not to be trusted.", "",
        markdown_table(rows), "",
    ]
    rel = ratios(rows)
    if rel:
        lines += ["Against PyTorch's fused RNNs (fwd+bwd):", "", *(f"- {s}" for s in rel), ""]
    bad = unsteady(rows)
    if bad:
        lines += ["Not to be trusted (repeated runs too far apart):", "",
                  *(f"- {s}" for s in bad), ""]
    if skipped:
        lines += ["Not measured:", "", *(f"- {s}" for s in skipped), ""]
    lines += ["![fwd+bwd tokens/s against T](bench.png)", ""]
    paths = write_rows(rows, ctx, out, "bench", "\n".join(lines), fields=COLUMNS)
    return {**paths, "png": png}


def _plot(rows: list[dict], path: Path, ctx: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault(f"{r['subject']} [{r['form']}]", []).append((r["T"], r["fwdbwd_tok_s"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        style = "--" if label.startswith("torch.") else "-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("fwd+bwd tokens/s")
    ax.set_title(f"batch {ctx['batch']}, d_model {ctx['d_model']}, {ctx['threads']} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
