"""Forward + backward tokens/s of attention, tcnca, aaren and rat at T = 512, 2048, 8192
(d_model 256, batch 1, float32, default hyperparameters, CPU, training mode = the first mode).

Usage: .venv/bin/python experiments/speed/attention_speed.py [--lengths 512 2048 8192]
       [--repeats 3] [--threads N]

A size is skipped, with a note, when its estimated activation memory would exceed ~8 GiB.
"""

from __future__ import annotations

import argparse
import time

import torch

from seqmem import mixers

NAMES = ("attention", "tcnca", "aaren", "rat")
D_MODEL = 256
LIMIT_BYTES = 8 * 2**30


def estimated_bytes(m: mixers.Mixer, t: int) -> int:
    """A rough upper bound of the largest activations kept for backward (float32)."""
    if m.name == "attention":
        keys = min(t, m.span)
        return 4 * 4 * m.n_heads * t * keys  # scores, probabilities, mask, grads
    if m.name == "rat":
        keys = m.n_cache + t // m.rat_chunk + 1
        return 4 * 4 * m.n_heads * t * keys + 4 * 16 * t * D_MODEL * 2  # + the scan's rounds
    return 4 * 64 * t * D_MODEL


def tokens_per_second(m: mixers.Mixer, t: int, repeats: int) -> float:
    x = torch.randn(1, t, D_MODEL, requires_grad=True)
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        y, _ = m(x)
        y.square().mean().backward()
        elapsed = time.perf_counter() - start
        if i:
            best = min(best, elapsed)
    return t / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"fwd+bwd tokens/s, d_model={D_MODEL}, batch 1, float32, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'mixer':<10}" + "".join(f"{'T=' + str(t):>12}" for t in args.lengths))
    for name in NAMES:
        m = mixers.build(name, D_MODEL)
        cells = []
        for t in args.lengths:
            if estimated_bytes(m, t) > LIMIT_BYTES:
                cells.append(f"{'skipped':>12}")
                continue
            cells.append(f"{tokens_per_second(m, t, args.repeats):>12.0f}")
        print(f"{name:<10}" + "".join(cells), flush=True)
    print("modes: " + ", ".join(f"{n}={mixers.get(n).modes[0]}" for n in NAMES)
          + "; attention spans max_len=1024 tokens by default (sliding beyond)")


if __name__ == "__main__":
    main()
