"""Measuring one configuration: throughput, decode latency, peak memory and FLOPs.

Every number is measured, never assumed: times are medians over repeated runs after a
warm-up run, with the spread (min and max) kept beside them, and subjects that are compared are
timed in interleaved rounds (`interleaved_rounds`); peak memory is the process's resident-set
high-water mark (Linux VmHWM, reset before each measurement) above the resident set before it;
FLOPs are counted by PyTorch's FlopCounterMode on a short sequence and scaled per token.

On a GPU the work a call queues runs after the call returns: every timed closure waits for its
device (`synchronize`) before the clock is read, and peak memory is the allocator's peak on
that device (torch.cuda.max_memory_allocated) above what was allocated before.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from seqmem.ops import tuning


@contextlib.contextmanager
def thread_count(threads: int | None):
    """torch's intra-op thread count set to `threads` inside the block (None or 0: left as
    it is), and the process's own setting restored after it."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def table_context(shapes, rounds: int) -> dict:
    """What a table's page states about how it was measured: torch, threads, the machine,
    the shapes (a dataclass), the rounds, the date and the dtype."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": machine(), "shapes": shapes.__dict__, "rounds": rounds,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "dtype": "float32"}


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def machine() -> str:
    """The CPU model (Linux /proc/cpuinfo, else platform) and its logical core count."""
    return tuning.cpu()


@dataclass
class Timing:
    """Median, min and max seconds of `n` runs."""

    median: float
    low: float
    high: float
    n: int


def synchronize(device: torch.device | str | None) -> None:
    """Wait until `device` has run the work queued on it, so that a clock read after it times
    the work and not its launch: torch.cuda.synchronize on cuda, torch.mps.synchronize on mps;
    nothing on the CPU (or None), whose ops have run when they return."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 1, *,
            device: torch.device | str | None = None) -> Timing:
    """Run fn `warmup` times unmeasured, then `repeats` times; the seconds of each run, each
    until `device` has finished its work (`synchronize`)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return timing(times)


ROUND_S = 0.05  # a round repeats each subject until it lasts at least this: ms-long calls are
# otherwise at the mercy of the scheduler's time slices on a shared machine


def timing(times: Sequence[float]) -> Timing:
    """The median, min and max of measured seconds."""
    return Timing(statistics.median(times), min(times), max(times), len(times))


def interleaved_rounds(fns: Sequence[Callable[[], object]], rounds: int, *, warmup: int = 1,
                       per_call: Sequence[float] | None = None, same_calls: bool = False,
                       round_s: float = ROUND_S) -> tuple[list[list[float]], list[int]]:
    """Seconds per call of every fn in each of `rounds` rounds: a round runs each fn in turn
    (in the given order in even rounds, reversed in odd ones, so that no fn always runs first
    or last), each for as many calls as make it last `round_s` (`same_calls`: one count for
    all, enough for the slowest), so that every fn is timed under the same machine load; on
    a shared machine back-to-back repetitions drift by up to 15 %. `warmup` unmeasured calls
    of each first; `per_call`: the seconds of one call of each, if known (else measured, the
    faster of two calls). Returns (times, calls): times[i][r] of fn i in round r, and the
    calls per round of each fn."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    if per_call is None:
        per_call = []
        for fn in fns:
            one = []
            for _ in range(2):
                t0 = time.perf_counter()
                fn()
                one.append(time.perf_counter() - t0)
            per_call.append(min(one))
    counts = [max(1, math.ceil(round_s / max(c, 1e-6))) for c in per_call]
    if same_calls:
        counts = [min(counts)] * len(fns)
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            fn, n = fns[i], counts[i]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[i].append((time.perf_counter() - t0) / n)
    return times, counts


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the kernel (glibc's malloc_trim), so that what
    fn allocates next is counted: memory freed by an earlier measurement otherwise stays
    resident and is reused without raising the resident set, and fn would read as ~0 MiB."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: nothing to do
        ctypes.CDLL(name).malloc_trim(0)


def peak_memory_mib(fn: Callable[[], object], device: torch.device | str | None = None
                    ) -> float | None:
    """Peak memory (MiB) that fn adds: on the CPU (or None) above the resident set before it
    (Linux only; None where the kernel does not let a process reset its high-water mark); on
    cuda, the allocator's peak on the device above what was allocated before."""
    if device is not None and torch.device(device).type == "cuda":
        device = torch.device(device)
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - before, 0) / 2**20
    gc.collect()
    _release_free_memory()
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(peak - before, 0) / 1024


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """Backward of a convolution: each requested gradient (input, weight) costs what the
    forward does. PyTorch's own formula ignores `groups` and counts a depthwise convolution's
    backward as a dense one (C times too many for C channels)."""
    fwd = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations PyTorch counts (matmuls, convolutions, attention) in fn."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(n: int = 1024, repeats: int = 20, *,
                  device: torch.device | str = "cpu") -> float:
    """The float32 matmul rate (GFLOP/s) of `device` (on the CPU with the current thread
    count): the roofline that the benchmark's fractions refer to. The fastest of `repeats`
    products: a ceiling is what the machine can do, and on a shared machine a median can land
    in a slow spell."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)  # drawn on the CPU, where the generator is
    b = torch.randn(n, n, generator=g).to(device)
    t = time_it(lambda: a @ b, repeats=repeats, warmup=2, device=device)
    return 2 * n**3 / t.low / 1e9


def ms(v: float) -> str:
    """Milliseconds for a table: three significant digits, whole ms from 100 up."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def fwd_bwd(module: nn.Module, x: torch.Tensor, call: Callable) -> Callable[[], None]:
    """A closure running forward and backward of call(module, x) (sum of outputs as loss).
    The input requires a gradient too, as it does for every layer but the first of a stack."""
    params = [p for p in module.parameters() if p.requires_grad]
    x = x.detach().requires_grad_(True)

    def run():
        for p in params:
            p.grad = None
        x.grad = None
        y = call(module, x)
        y.sum().backward()
        x.grad = None  # not kept between runs: many subjects share one long input
        synchronize(x.device)  # a GPU's queued work is part of the call

    return run


def fwd_only(module: nn.Module, x: torch.Tensor, call: Callable) -> Callable[[], None]:
    """A closure running the forward of call(module, x) without autograd."""

    def run():
        with torch.no_grad():
            call(module, x)
        synchronize(x.device)

    return run


def write_rows(rows: list[dict], ctx: dict, out_dir: Path, stem: str, md: str, *,
               fields: Sequence[str] = ("op",)) -> dict[str, Path]:
    """<stem>.jsonl (each row with the context), <stem>.csv (the rows' keys; `fields` when
    there are no rows) and <stem>.md in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{stem}.{k}" for k in ("jsonl", "csv", "md")}
    with paths["jsonl"].open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "context": ctx}) + "\n")
    keys = list(dict.fromkeys(k for r in rows for k in r)) or list(fields)
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    paths["md"].write_text(md)
    return paths
