"""Forward + backward tokens/s of the `gla` and `gated_delta_rule` ops, chunked vs recurrent
(h = 4, d_k = d_v = 64, batch 4, float32, CPU).

The chunked form runs at T = 2048; the recurrent loop, whose cost per token does not depend on
T, is timed on a shorter sequence (--recurrent-length, default 256) and reported per token.
Beside the ratio: the chunked form's matmul FLOPs (counted by PyTorch's FlopCounterMode) as a
fraction of the machine's fp32 matmul rate, and the ratio the chunked form would reach if all
those FLOPs ran at that rate (its ceiling on this machine: the recurrent loop is not slowed).

Usage: .venv/bin/python experiments/speed/linear_attention_speed.py [--length 2048]
       [--recurrent-length 256] [--chunk-size 64] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from seqmem.bench.measure import count_flops, matmul_gflops
from seqmem.ops import gated_delta_rule, gla

BATCH, HEADS, D = 4, 4, 64


def inputs(op: str, t: int, gen: torch.Generator) -> list[torch.Tensor]:
    """q, k, v and the op's gates for a sequence of t tokens, each requiring grad."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = (randn(BATCH, t, HEADS, D) for _ in range(3))
    if op == "gla":
        g = F.logsigmoid(randn(BATCH, t, HEADS, D)) / 16  # the GLA paper's gate temperature
        args = [q, k, v, g]
    else:
        k = F.normalize(k, dim=-1)
        g = F.logsigmoid(randn(BATCH, t, HEADS))  # (b, t, h)
        beta = torch.rand(BATCH, t, HEADS, generator=gen)
        args = [q, k, v, g, beta]
    return [a.requires_grad_(True) for a in args]


def fwd_bwd(op: str, mode: str, t: int, chunk_size: int):
    fn = gla if op == "gla" else gated_delta_rule
    args = inputs(op, t, torch.Generator().manual_seed(0))

    def run():
        if op == "gla":
            o, S = fn(*args, mode=mode, chunk_size=chunk_size)
        else:  # the delta rule's gates are keyword arguments
            q, k, v, g, beta = args
            o, S = fn(q, k, v, g=g, beta=beta, mode=mode, chunk_size=chunk_size)
        (o.square().mean() + S.square().mean()).backward()

    return run


def tokens_per_second(op: str, mode: str, t: int, chunk_size: int, repeats: int) -> float:
    run = fwd_bwd(op, mode, t, chunk_size)
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        run()
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
    print(f"fwd+bwd tokens/s (batch x time / s), h={HEADS}, d={D}, batch {BATCH}, float32, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    rate = matmul_gflops()
    print(f"matmul rate {rate:.1f} GFLOP/s")
    print(f"{'op':<18}{'chunk T=' + str(args.length):>16}"
          f"{'recurrent T=' + str(args.recurrent_length):>20}{'ratio':>8}"
          f"{'roofline':>10}{'ceiling':>9}")
    for op in ("gla", "gated_delta_rule"):
        chunk = tokens_per_second(op, "chunk", args.length, args.chunk_size, args.repeats)
        loop = tokens_per_second(op, "recurrent", args.recurrent_length, args.chunk_size,
                                 args.repeats)
        flops = count_flops(fwd_bwd(op, "chunk", args.length, args.chunk_size))
        at_rate = BATCH * args.length / (flops / (rate * 1e9))  # tokens/s at the matmul rate
        print(f"{op:<18}{chunk:>16,.0f}{loop:>20,.0f}{chunk / loop:>8.1f}"
              f"{chunk / at_rate:>10.1%}{at_rate / loop:>9.1f}")


if __name__ == "__main__":
    main()
