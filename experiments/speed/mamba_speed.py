"""Forward + backward tokens/s of the `mamba` mixer, chunked vs recurrent (d_model 256,
d_state 16, so d_inner 512; batch 4, float32, CPU), and of its `selective_scan` op alone.

The chunked form runs at T = 2048; the recurrent loop, whose cost per token does not depend on
T, is timed on a shorter sequence (--recurrent-length, default 256) and reported per token.
Beside the ratio: the chunked form's matmul FLOPs (counted by PyTorch's FlopCounterMode) as a
fraction of the machine's fp32 matmul rate, and the ratio the chunked form would reach if all
those FLOPs ran at that rate (its ceiling on this machine: the recurrent loop is not slowed).

Usage: .venv/bin/python experiments/speed/mamba_speed.py [--length 2048]
       [--recurrent-length 256] [--chunk-size 64] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

import seqmem.mixers.mamba  # noqa: F401  (registers mamba, should the package not import it)
from seqmem.bench.measure import count_flops, matmul_gflops
from seqmem.mixers import build
from seqmem.ops.selective import selective_scan

BATCH, D_MODEL, D_STATE = 4, 256, 16


def mixer_call(mode: str, t: int, chunk_size: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mixer = build("mamba", D_MODEL, d_state=D_STATE)
    x = torch.randn(BATCH, t, D_MODEL, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    return lambda: mixer(x, mode=mode, chunk_size=chunk_size)


def scan_call(mode: str, t: int, chunk_size: int):
    gen = torch.Generator().manual_seed(0)
    d = 2 * D_MODEL
    u, delta = (torch.randn(BATCH, t, d, generator=gen) for _ in range(2))
    B, C = (torch.randn(BATCH, t, D_STATE, generator=gen) for _ in range(2))
    A = -torch.arange(1, D_STATE + 1.0).repeat(d, 1)
    bias = torch.full((d,), -3.0)
    args = [a.requires_grad_(True) for a in (u, delta, A, B, C, bias)]
    return lambda: selective_scan(*args[:5], delta_bias=args[5], delta_softplus=True,
                                  mode=mode, chunk_size=chunk_size)


def _fwd_bwd(fn) -> None:
    y, state = fn()
    (y.square().mean() + state[-1].square().mean()).backward()


def _best(fn, t: int, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        _fwd_bwd(fn)
        elapsed = time.perf_counter() - start
        if i:
            best = min(best, elapsed)
    return BATCH * t / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--recurrent-length", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"fwd+bwd tokens/s (batch x time / s), d_model={D_MODEL} (d_inner {2 * D_MODEL}), "
          f"d_state={D_STATE}, batch {BATCH}, float32, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}; recurrent timed at T={args.recurrent_length}, per token")
    rate = matmul_gflops()
    print(f"matmul rate {rate:.1f} GFLOP/s")
    print(f"{'':<16}{'chunk T=' + str(args.length):>16}"
          f"{'recurrent T=' + str(args.recurrent_length):>20}{'ratio':>8}"
          f"{'roofline':>10}{'ceiling':>9}")
    # the selective scan's per-(channel, state) decays make it elementwise work: the matmul
    # roofline does not bound it, so no ceiling is quoted for it
    for what, make, matmul_bound in (("mamba mixer", mixer_call, True),
                                     ("selective_scan", scan_call, False)):
        chunk = _best(make("chunk", args.length, args.chunk_size), args.length, args.repeats)
        loop = _best(make("recurrent", args.recurrent_length, args.chunk_size),
                     args.recurrent_length, args.repeats)
        fn = make("chunk", args.length, args.chunk_size)
        flops = count_flops(lambda fn=fn: _fwd_bwd(fn))
        line = f"{what:<16}{chunk:>16,.0f}{loop:>20,.0f}{chunk / loop:>8.1f}"
        if matmul_bound:
            at_rate = BATCH * args.length / (flops / (rate * 1e9))  # tokens/s at that rate
            line += f"{chunk / at_rate:>10.1%}{at_rate / loop:>9.1f}"
        else:
            line += f"{'-':>10}{'-':>9}"
        print(line)


if __name__ == "__main__":
    main()
