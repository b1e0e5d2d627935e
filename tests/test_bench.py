"""The benchmark's measuring tools against closed forms, and one tiny end-to-end bench.
(Speed itself is never asserted: only that what is measured is measured right.)"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
import torch

from seqmem.bench.measure import count_flops, fwd_bwd, peak_memory_mib, time_it
from seqmem.bench.run import BenchConfig, predicted_peak_mib, run_bench, write_outputs


def test_count_flops_closed_forms():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert count_flops(lambda: a @ b) == 2 * 3 * 5 * 7
    lin = torch.nn.Linear(5, 7, bias=False)
    x = torch.randn(4, 3, 5)
    # forward 2*12*5*7; backward: grad wrt input and wrt weight, each the same count
    assert count_flops(fwd_bwd(lin, x, lambda m, x: m(x))) == 3 * 2 * 12 * 5 * 7


def test_time_it_counts_runs_and_orders_spread():
    calls = []
    t = time_it(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and t.n == 4
    assert 0 <= t.low <= t.median <= t.high


def test_peak_memory_sees_a_large_allocation():
    mib = peak_memory_mib(lambda: torch.ones(40_000_000).add_(1))  # 160 MB of float32
    if mib is None:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert mib > 120


def test_peak_memory_counts_memory_an_earlier_run_freed():
    """Small tensors (below the allocator's mmap threshold) freed by one run stay with the
    allocator when a later allocation pins the heap above them; the next measurement of the
    same work must still see its ~8 MiB."""
    pinned = []

    def work():
        xs = [torch.ones(4096) for _ in range(512)]  # 512 x 16 KiB
        pinned.append(torch.ones(4096))  # outlives xs, above them on the heap
        return xs

    first = peak_memory_mib(work)
    if first is None:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert first > 6 and peak_memory_mib(work) > 6


def test_tiny_bench_rows_and_outputs(tmp_path):
    cfg = BenchConfig(mixers=("elman",), references=("torch.nn.RNN",), lengths=(8, 16),
                      batch=2, d_model=8, repeats=1, step_repeats=2, memory=False)
    ctx, rows = run_bench(cfg)
    assert [(r["subject"], r["T"]) for r in rows] == [
        ("elman", 8), ("elman", 16), ("torch.nn.RNN", 8), ("torch.nn.RNN", 16)]
    for r in rows:
        assert r["fwdbwd_tok_s"] > 0 and r["fwd_tok_s"] > 0
        assert r["fwdbwd_tok_s_low"] <= r["fwdbwd_tok_s"] <= r["fwdbwd_tok_s_high"]
    elman = rows[0]
    # elman: input and recurrent matmuls (2 d^2 each per token), each with two backward
    # products, except the gradient into the (constant) initial state: 12 d^2 - 2 d^2 / T
    d, T = 8, 8
    assert elman["flops_per_token"] == 12 * d * d - 2 * d * d / T
    assert elman["step_ms"] > 0 and rows[2]["step_ms"] is None
    assert ctx["matmul_gflops"] > 0 and ctx["threads"] >= 1
    paths = write_outputs(ctx, rows, tmp_path, skipped=ctx["skipped"], command="seqmem bench")
    lines = [json.loads(x) for x in paths["jsonl"].read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["context"]["torch"] == torch.__version__
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == 4
    md = paths["md"].read_text()
    assert "| elman | recurrent | 16 |" in md and "elman [recurrent] / torch.nn.RNN" in md
    assert paths["png"].stat().st_size > 1000


def test_bench_cli_tiny_and_bad_input(tmp_path):
    cmd = [sys.executable, "-m", "seqmem.cli.main", "bench", "--mixers", "gru", "--lengths",
           "4", "--batch", "1", "--d-model", "4", "--repeats", "1", "--references", "none",
           "--no-memory", "--out", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bench.md").exists() and "| gru | recurrent | 4 |" in r.stdout
    bad = subprocess.run([*cmd[:4], "--mixers", "nosuch"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown mixer 'nosuch'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_depthwise_convolution_flops_forward_and_backward():
    """A depthwise convolution: 2 C k t_out FLOPs forward and as many for each gradient
    (input, weight); PyTorch's default backward formula would count it as a dense one."""
    import torch.nn.functional as F

    C, k, t = 16, 4, 50
    x = torch.randn(1, C, t, requires_grad=True)
    w = torch.randn(C, 1, k, requires_grad=True)
    t_out = t + k - 1

    def fwd_bwd():
        F.conv1d(x, w, groups=C, padding=k - 1).sum().backward()

    assert count_flops(fwd_bwd) == 3 * 2 * C * k * t_out
    with torch.no_grad():
        assert count_flops(lambda: F.conv1d(x, w, groups=C, padding=k - 1)) == 2 * C * k * t_out


def test_peak_memory_extrapolation_closed_forms():
    assert predicted_peak_mib([(100, 10.0)], 400) is None  # one point: no guess
    assert predicted_peak_mib([(100, 10.0), (200, 20.0)], 800) == pytest.approx(80.0)  # linear
    assert predicted_peak_mib([(100, 10.0), (200, 40.0)], 400) == pytest.approx(160.0)  # T^2
    # steeper than quadratic is read as quadratic; flatter than linear as linear
    assert predicted_peak_mib([(100, 10.0), (200, 80.0)], 400) == pytest.approx(320.0)
    assert predicted_peak_mib([(100, 10.0), (200, 11.0)], 400) == pytest.approx(22.0)


def test_bench_skips_lengths_over_the_memory_limit_and_streams_rows(tmp_path):
    cfg = BenchConfig(mixers=("elman",), references=(), lengths=(8, 16, 32, 64), batch=2,
                      d_model=8, repeats=1, step_repeats=2, memory=True, memory_limit_mib=1e-9)
    seen = []
    ctx, rows = run_bench(cfg, on_row=seen.append)
    if any(r["peak_mib"] is None for r in rows):
        pytest.skip("this kernel does not let a process reset its peak RSS")
    # two lengths are measured, then the extrapolated peak passes the (tiny) limit
    assert [r["T"] for r in rows] == [8, 16] and seen == rows
    assert len(ctx["skipped"]) == 1 and "elman [recurrent] from T=32" in ctx["skipped"][0]


def test_flops_per_token_counts_a_fixed_cost_directly():
    """FLOPs of c + a T (a fixed cost, as lssl's squarings of its transition) would extrapolate
    to a negative quadratic: the count at long T is then direct, and equals the closed form."""
    from seqmem.bench.run import _flops_per_token

    d, c_size = 4, 32

    class FixedPlusLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(d, d))
            self.m = torch.nn.Parameter(torch.randn(c_size, c_size))

        def forward(self, x):
            fixed = (self.m @ self.m).sum()  # 2 c^3 FLOPs whatever T is
            return x @ self.w + fixed  # 2 d^2 per token

    cfg = BenchConfig(d_model=d)
    T = 4096
    per_token = _flops_per_token(FixedPlusLinear(), lambda m, x: m(x), cfg, T,
                                 torch.Generator().manual_seed(0))
    # forward 2 c^3 + 2 d^2 T; backward: two products each (the input needs a gradient too)
    expected = (3 * 2 * c_size**3 + 3 * 2 * d * d * T) / T
    assert per_token == pytest.approx(expected)


def test_rows_whose_repeated_runs_differ_too_much_are_flagged(tmp_path, monkeypatch):
    """A fake timing whose slowest round is 3x its fastest at T = 16 (and 1.2x elsewhere):
    that row's spread is 3, marked in bench.md and printed; the steady row is not."""
    from rich.console import Console

    import seqmem.bench.run as bench_run
    from seqmem.cli import tables

    state = {"T": 0}
    real_randn = torch.randn

    def randn(*size, **kw):  # the bench draws each length's input first: remember T
        if len(size) == 3:
            state["T"] = size[1]
        return real_randn(*size, **kw)

    def fake_rounds(fns, rounds, **kw):
        for fn in fns:
            fn()
        wide = 3.0 if state["T"] == 16 else 1.2
        times = [0.01 / wide ** 0.5, 0.01, 0.01 * wide ** 0.5]
        return [list(times) for _ in fns], [1] * len(fns)

    monkeypatch.setattr(bench_run.torch, "randn", randn)
    monkeypatch.setattr(bench_run, "interleaved_rounds", fake_rounds)
    cfg = BenchConfig(mixers=("elman",), references=(), lengths=(8, 16), batch=1, d_model=4,
                      repeats=3, step_repeats=1, memory=False)
    ctx, rows = run_bench(cfg)
    assert [r["spread"] for r in rows] == [pytest.approx(1.2), pytest.approx(3.0)]
    assert bench_run.unsteady(rows) == [
        "elman [recurrent] T=16: repeated runs differ 3.0x (max/min) > 1.5x: not to be trusted"]
    paths = write_outputs(ctx, rows, tmp_path, skipped=[], command="seqmem bench")
    md = paths["md"].read_text()
    assert "| 1.20x |" in md and "| 3.00x ! |" in md and "Not to be trusted" in md
    out = io.StringIO()
    tables.bench(Console(file=out, width=200), ctx, rows, paths)
    printed = [line for line in out.getvalue().splitlines() if line.startswith("unsteady:")]
    assert printed == ["unsteady: " + bench_run.unsteady(rows)[0]]


def test_interleaved_rounds_alternate_the_order_and_time_every_call():
    """Round r runs the subjects in order for even r, reversed for odd r; each subject runs
    its calls per round back to back, enough to last round_s; times are per call."""
    from seqmem.bench.measure import interleaved_rounds, timing

    log = []
    fns = [lambda i=i: log.append(i) for i in range(3)]
    times, calls = interleaved_rounds(fns, 4, warmup=1, per_call=[0.1, 0.01, 0.1],
                                      round_s=0.05)
    assert calls == [1, 5, 1]
    warm, measured = log[:3], log[3:]
    assert warm == [0, 1, 2]
    one = [0, 1, 1, 1, 1, 1, 2]
    assert measured == one + one[::-1] + one + one[::-1]
    assert [len(t) for t in times] == [4, 4, 4] and all(x >= 0 for t in times for x in t)
    _, same = interleaved_rounds(fns, 1, warmup=0, per_call=[0.1, 0.01, 0.1], same_calls=True,
                                 round_s=0.05)
    assert same == [1, 1, 1]
    t = timing([3.0, 1.0, 2.0])
    assert (t.median, t.low, t.high, t.n) == (2.0, 1.0, 3.0, 3)


def test_one_run_has_no_spread_and_the_thread_count_is_restored():
    import seqmem.bench.run as bench_run
    from seqmem.bench.measure import Timing

    assert bench_run.spread(Timing(1.0, 1.0, 1.0, 1), None) is None
    assert bench_run.spread(Timing(1.0, 1.0, 2.0, 3), Timing(1.0, 1.0, 1.5, 3)) == 2.0
    before = torch.get_num_threads()
    ctx, _ = run_bench(BenchConfig(mixers=("elman",), references=(), lengths=(4,), batch=1,
                                   d_model=4, repeats=1, step_repeats=1, memory=False,
                                   threads=1))
    assert ctx["threads"] == 1 and torch.get_num_threads() == before
