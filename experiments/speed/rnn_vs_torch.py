"""seqmem's classic RNNs against PyTorch's fused torch.nn.RNN / GRU / LSTM, forward + backward,
timed in alternation so that a slow spell of a shared machine hits both sides alike.

For each pair (default: hidden 256, batch 64, T = 512, float32) the two are run one after the
other, --rounds times; each round's ratio is seqmem's tokens/s over torch's, and the median
ratio over the rounds is reported with its range. The mixer includes its input projection, as
torch's modules do.

Usage: .venv/bin/python experiments/speed/rnn_vs_torch.py [--mixers leaky_rnn,elman,gru,lstm]
       [--forms recurrent,fused] [--hidden 256] [--batch 64] [--length 512] [--rounds 9]
       [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from seqmem import mixers

REFERENCE = {"leaky_rnn": nn.RNN, "elman": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


def _fwd_bwd(fn, x: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    fn(x).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixers", default="leaky_rnn,elman,gru,lstm")
    ap.add_argument("--forms", default="recurrent,fused",
                    help="forms to time, where the mixer has them")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.batch, args.length, args.hidden,
                    generator=torch.Generator().manual_seed(0))
    tokens = args.batch * args.length
    print(f"fwd+bwd, hidden {args.hidden}, batch {args.batch}, T = {args.length}, float32, "
          f"{args.threads} threads, {args.rounds} alternating rounds (after one warm-up each)")
    print(f"{'mixer [form]':<22}{'reference':<16}{'seqmem tok/s':>14}{'torch tok/s':>13}"
          f"{'median ratio':>14}{'range':>14}")
    for name in args.mixers.split(","):
        ref = REFERENCE[name](args.hidden, args.hidden, batch_first=True)
        m = mixers.build(name, args.hidden)
        for form in args.forms.split(","):
            if form not in type(m).modes:
                continue

            def ours(z, m=m, form=form):
                return m(z, mode=form)[0]

            def theirs(z, ref=ref):
                return ref(z)[0]

            _fwd_bwd(ours, x), _fwd_bwd(theirs, x)  # warm-up
            pairs = [(_fwd_bwd(ours, x), _fwd_bwd(theirs, x)) for _ in range(args.rounds)]
            ratios = [t_ref / t_ours for t_ours, t_ref in pairs]
            ours_best = tokens / min(p[0] for p in pairs)
            ref_best = tokens / min(p[1] for p in pairs)
            print(f"{name + ' [' + form + ']':<22}{type(ref).__name__:<16}{ours_best:>14,.0f}"
                  f"{ref_best:>13,.0f}{statistics.median(ratios):>13.2f}x"
                  f"{min(ratios):>8.2f}-{max(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
