"""`seqmem bench --grid`: the 2-D mixers (`seqmem.mixers.names_2d()`) at growing grid sizes.

For each 2-D mixer (those of `cfg.mixers` that are 2-D; none named: all of them), each of its
modes (`cfg.forms` if given) and each square grid side in `GRID_SIDES` (quick: the first
two): forward + backward of the mixer alone on x (b, H, W, d_model) in float32 (the sum of
outputs as the loss). At each side all subjects are timed against one another in
`cfg.repeats` interleaved rounds (`measure.interleaved_rounds`): the median over the rounds
with its range, cells per second, and the peak memory that one forward + backward adds
(`measure.peak_memory_mib`). A subject whose call exceeds `cfg.budget_s` is not measured at
larger grids (the scan visits cells one by one, so it meets the budget first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from seqmem import mixers
from seqmem.bench.config import BenchConfig
from seqmem.bench.measure import (
    fwd_bwd,
    interleaved_rounds,
    machine,
    peak_memory_mib,
    thread_count,
    timing,
    write_rows,
)
from seqmem.build import seeded

GRID_SIDES = (8, 16, 32)
QUICK_D_MODEL = 32


def run_grid(cfg: BenchConfig, *, progress: Callable[[str], None] | None = None
             ) -> tuple[dict, list[dict]]:
    """Rows {mixer, form, grid, cells, fwdbwd_ms (and _low, _high), cells_s, peak_mib} of every
    2-D mixer x mode x grid side, with the context {machine, torch, threads, b, d_model}."""
    names = [n for n in cfg.mixers if mixers.is_2d(n)] or mixers.names_2d()
    sides = GRID_SIDES[:2] if cfg.shapes == "quick" else GRID_SIDES
    d = QUICK_D_MODEL if cfg.shapes == "quick" else cfg.d_model
    rows = []
    with thread_count(cfg.threads):
        subjects = []  # (name, form, module)
        for name in names:
            with seeded(cfg.seed):
                m = mixers.build_2d(name, d)
            subjects += [(name, f, m) for f in m.modes if not cfg.forms or f in cfg.forms
                         or ("default" in cfg.forms and f == m.modes[0])]
        for side in sides:
            if not subjects:
                break
            x = torch.randn(cfg.batch, side, side, d,
                            generator=torch.Generator().manual_seed(cfg.seed))
            fns = [fwd_bwd(m, x, lambda mod, u, f=form: mod(u, mode=f)[0])
                   for _, form, m in subjects]
            times, _ = interleaved_rounds(fns, cfg.repeats)
            slow = []
            for (name, form, _m), run, ts in zip(subjects, fns, times, strict=True):
                t = timing(ts)
                cells = cfg.batch * side * side
                rows.append({"mixer": name, "form": form, "grid": f"{side}x{side}",
                             "cells": side * side, "fwdbwd_ms": 1e3 * t.median,
                             "fwdbwd_ms_low": 1e3 * t.low, "fwdbwd_ms_high": 1e3 * t.high,
                             "cells_s": cells / t.median,
                             "peak_mib": peak_memory_mib(run) if cfg.memory else None})
                if progress:
                    progress(f"{name} {form} {side}x{side}: {1e3 * t.median:.3g} ms")
                if t.median > cfg.budget_s:
                    slow.append((name, form))
            subjects = [s for s in subjects if s[:2] not in slow]  # no larger grids for these
    ctx = {"machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads()
           if cfg.threads is None else cfg.threads, "b": cfg.batch, "d_model": d,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    return ctx, rows


def grid_markdown(rows: list[dict], ctx: dict, *, command: str) -> str:
    """The table of `run_grid` with how to read it."""
    lines = ["# 2-D mixers at growing grid sizes", "", f"Regenerate with `{command}`.", "",
             f"Machine: {ctx['machine']}; torch {ctx['torch']}, {ctx['threads']} thread(s); "
             f"float32; b = {ctx['b']}, d_model = {ctx['d_model']}; measured {ctx['date']}. "
             f"Forward + backward of the mixer alone on a (b, H, W, d_model) grid: median "
             f"(range) over the repeats; peak: the memory one forward + backward adds.", "",
             "| mixer | form | grid | fwd+bwd ms | cells/s | peak MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"| {r['mixer']} | {r['form']} | {r['grid']} | {r['fwdbwd_ms']:.3g} "
                     f"({r['fwdbwd_ms_low']:.3g}-{r['fwdbwd_ms_high']:.3g}) | "
                     f"{r['cells_s']:,.0f} | {peak} |")
    return "\n".join(lines) + "\n"


def grid_to(cfg: BenchConfig, out_dir: Path, *, command: str,
            progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, Path]]:
    """`run_grid`, written as grid2d.jsonl, grid2d.csv and grid2d.md to out_dir."""
    ctx, rows = run_grid(cfg, progress=progress)
    return rows, write_rows(rows, ctx, Path(out_dir), "grid2d",
                            grid_markdown(rows, ctx, command=command))
