"""Peak memory and time of one training step (forward + backward) of every mixer's training form
on one long sequence (default T = 65,536, batch 1, d_model 256, float32).

Each mixer runs in its own subprocess, so one mixer's freed memory cannot hide another's peak
and a mixer that runs out of memory cannot stop the others. Peak memory is the subprocess's
resident-set high-water mark (Linux VmHWM) above its resident set just before the step.

Usage: .venv/bin/python experiments/speed/long_sequence_memory.py [--length 65536]
       [--d-model 256] [--mixers a,b,...] [--timeout 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
from seqmem import mixers
from seqmem.bench.measure import peak_memory_mib
name, T, d, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
m = mixers.build(name, d)
x = torch.randn(1, T, d, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
form = type(m).modes[0]

def step():
    y, _ = m(x, mode=form)
    y.sum().backward()

t0 = time.perf_counter()
peak = peak_memory_mib(step)
print(json.dumps({"mixer": name, "form": form, "peak_mib": peak,
                  "seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=65536)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--mixers", default="", help="comma-separated (default: every mixer)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mixer")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from seqmem import mixers

    names = [n for n in args.mixers.split(",") if n] or list(mixers.names())
    print(f"one fwd+bwd, T = {args.length:,}, batch 1, d_model {args.d_model}, float32, "
          f"{args.threads} threads")
    print(f"{'mixer':<16}{'form':<12}{'peak MiB':>10}{'seconds':>10}")
    for name in names:
        start = time.perf_counter()
        try:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, name, str(args.length), str(args.d_model),
                 str(args.threads)], capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"{name:<16}{'':<12}{'':>10}{'> ' + str(int(args.timeout)):>10}  (timed out)",
                  flush=True)
            continue
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["killed"])[-1]
            print(f"{name:<16}failed after {time.perf_counter() - start:.0f} s "
                  f"(exit {out.returncode}): {last[:80]}", flush=True)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        print(f"{name:<16}{r['form']:<12}{peak:>10}{r['seconds']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
