"""N-parity and N-DMS, the memory tasks of the flagship paper.

Khajehabdollahi, Zeraati, Giannakakis, Schäfer, Martius & Levina, "Emergent mechanisms for long
timescales depend on training curriculum and affect performance in memory tasks", ICLR 2024;
authors' code: LevinaLab/rnn_timescale_public.

Both tasks read one channel of bits x_t in {0, 1} and have one binary head per N in `N` (all
heads see the same sequences):

- N-parity:  y = (x[t-N+1] + ... + x[t]) mod 2     (the last N bits, the current one included)
- N-DMS:     y = 1 if x[t-N+1] == x[t] else 0      (delayed match-to-sample, N-1 steps back)

Training batches (streaming=False), as in the paper: one length M per batch,
M ~ U{N_max + 2, ..., 4 N_max + 1} with N_max = max(N), and a label at the last step only
(t = M - 1). N-parity draws per sequence p ~ U(0, 1) and bits ~ Bernoulli(p) (deliberately
unbalanced); N-DMS draws bits ~ Bernoulli(0.5).

Streaming evaluation (streaming=True), as in the paper: one stream of `stream_len` (1,100)
Bernoulli(0.5) bits per example, for both tasks, a read-out at every step, the first
`burn_in` (100) steps not scored.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from seqmem.errors import SeqmemError
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register


def check_N(N) -> list[int]:
    """N as a list of distinct integers >= 2 (an int is a list of one), else a SeqmemError."""
    if isinstance(N, int) and not isinstance(N, bool):
        return [check_int("N", N, low=2)]
    if not isinstance(N, (list, tuple)) or len(N) == 0:
        raise SeqmemError(
            f"N must be an integer >= 2 or a non-empty list of integers >= 2, got {N!r}"
        )
    values = [check_int(f"every N of {N!r}", n, low=2) for n in N]
    repeated = sorted({n for n in values if values.count(n) > 1})
    if repeated:
        raise SeqmemError(
            f"N must not repeat a value (one head per N), got {N!r}; repeated: "
            f"{', '.join(map(str, repeated))}"
        )
    return values


class _BitsTask(Task):
    """Shared plumbing of the flagship tasks: options, lengths, masks and targets.

    Subclasses define the bits of a training batch (`_training_bits`) and the label of every
    window of N bits (`_labels`).
    """

    recipe: ClassVar[str] = "khajehabdollahi2024"  # the flagship paper's training recipe

    def __init__(
        self,
        *,
        N: int | list[int] = 2,
        streaming: bool = False,
        stream_len: int = 1100,
        burn_in: int = 100,
    ):
        self.N = check_N(N)
        if not isinstance(streaming, bool):
            raise SeqmemError(f"streaming must be true or false, got {streaming!r}")
        self.streaming = streaming
        self.stream_len = check_int("stream_len", stream_len, low=1)
        self.burn_in = check_int("burn_in", burn_in, low=0)
        if stream_len <= burn_in:
            raise SeqmemError(
                f"stream_len must be greater than burn_in, got stream_len={stream_len} and "
                f"burn_in={burn_in}"
            )
        if streaming and stream_len < max(self.N):
            raise SeqmemError(
                f"stream_len must be >= max(N) so that some step is scored, got "
                f"stream_len={stream_len} and max(N)={max(self.N)}"
            )
        self.d_input = 1
        self.heads = [2] * len(self.N)

    def max_length(self) -> int:
        """Training sequences have M in [N_max + 2, 4 N_max + 2) steps; streams stream_len."""
        return self.stream_len if self.streaming else 4 * max(self.N) + 1

    # ---- what a subclass defines ----------------------------------------------------------
    def _training_bits(self, batch_size: int, M: int, generator: torch.Generator
                       ) -> tuple[Tensor, dict]:
        """Bits (b, M) bool of a training batch and the per-example facts for meta."""
        raise NotImplementedError

    @staticmethod
    def _labels(bits: Tensor, N: int) -> Tensor:
        """Label of every complete window: bits (b, T) bool -> (b, T - N + 1) long, column
        i being the label read out at t = N - 1 + i."""
        raise NotImplementedError

    # ---- sampling -------------------------------------------------------------------------
    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch: a training batch (label at the last step) or, with streaming=True, an
        evaluation stream (a label at every step from max(burn_in, N_max - 1) on)."""
        check_sample_args(self, batch_size, generator)
        if self.streaming:
            return self._sample_stream(batch_size, generator)
        return self._sample_last(batch_size, generator)

    def _sample_last(self, b: int, generator: torch.Generator) -> Batch:
        N_max = max(self.N)
        M = int(torch.randint(N_max + 2, 4 * N_max + 2, (), generator=generator))
        bits, facts = self._training_bits(b, M, generator)  # (b, M)
        targets = torch.zeros(b, M, len(self.N), dtype=torch.long)  # (b, M, n_heads)
        for j, N in enumerate(self.N):
            targets[:, M - 1, j] = self._labels(bits[:, M - N:], N)[:, 0]
        mask = torch.zeros(b, M, dtype=torch.bool)  # (b, M)
        mask[:, M - 1] = True
        inputs = bits.to(torch.float32).unsqueeze(-1)  # (b, M, 1)
        return Batch(inputs, targets, mask, {"N": list(self.N), "seq_len": M, **facts})

    def _sample_stream(self, b: int, generator: torch.Generator) -> Batch:
        T = self.stream_len
        bits = torch.rand(b, T, generator=generator) < 0.5  # (b, T)
        start = max(self.burn_in, max(self.N) - 1)
        mask = torch.zeros(b, T, dtype=torch.bool)  # (b, T)
        mask[:, start:] = True
        targets = torch.zeros(b, T, len(self.N), dtype=torch.long)  # (b, T, n_heads)
        for j, N in enumerate(self.N):
            targets[:, start:, j] = self._labels(bits, N)[:, start - (N - 1):]
        inputs = bits.to(torch.float32).unsqueeze(-1)  # (b, T, 1)
        meta = {"N": list(self.N), "seq_len": T, "burn_in": self.burn_in}
        return Batch(inputs, targets, mask, meta)


@register("n_parity")
class NParity(_BitsTask):
    """N-parity: the parity of the last N bits, y_t = (x[t-N+1] + ... + x[t]) mod 2.

    Khajehabdollahi et al., ICLR 2024. Training batches: one length M ~ U{N_max+2 .. 4 N_max+1}
    per batch; per sequence p ~ U(0, 1) and bits ~ Bernoulli(p); one label per head at the last
    step. meta: {"N", "seq_len": M, "p": (b,) tensor}. streaming=True: Bernoulli(0.5) streams
    of stream_len bits, a label at every step from max(burn_in, N_max - 1) on; meta: {"N",
    "seq_len", "burn_in"}.

    seqmem's choices: draw order per training batch is M, then p, then the bits (all from the
    generator); the stream's unscored steps also include t < N_max - 1, where the longest
    window is not yet full.

    Args:
        N: the window (an int, or a list: one read-out head per N, the multi-head curriculum).
        streaming: evaluate on long Bernoulli(0.5) streams with a label at every step instead
            of one label per sequence.
        stream_len: bits per stream when streaming.
        burn_in: unscored first steps of a stream.
    """

    def _training_bits(self, batch_size, M, generator):
        p = torch.rand(batch_size, generator=generator)  # (b,)
        bits = torch.rand(batch_size, M, generator=generator) < p[:, None]  # (b, M)
        return bits, {"p": p}

    @staticmethod
    def _labels(bits: Tensor, N: int) -> Tensor:
        # Window sums as differences of a cumulative sum: O(T) per head, whatever N is.
        csum = torch.cumsum(bits.long(), dim=1)  # (b, T)
        csum = torch.nn.functional.pad(csum, (1, 0))  # (b, T + 1), csum[:, i] = sum of x[:i]
        return (csum[:, N:] - csum[:, :-N]) % 2  # (b, T - N + 1)


@register("n_dms")
class NDMS(_BitsTask):
    """N-DMS (delayed match-to-sample): y_t = 1 if x[t-N+1] == x[t] else 0.

    Khajehabdollahi et al., ICLR 2024. The current bit is compared with the one N-1 steps
    back. Training batches: one length M ~ U{N_max+2 .. 4 N_max+1} per batch; bits ~
    Bernoulli(0.5); one label per head at the last step. meta: {"N", "seq_len": M}.
    streaming=True: as for N-parity, Bernoulli(0.5) streams with a label at every step from
    max(burn_in, N_max - 1) on; meta: {"N", "seq_len", "burn_in"}.

    seqmem's choices: draw order per training batch is M, then the bits; the stream's unscored
    steps also include t < N_max - 1.

    Args: as `n_parity`.
    """

    def _training_bits(self, batch_size, M, generator):
        return torch.rand(batch_size, M, generator=generator) < 0.5, {}  # (b, M)

    @staticmethod
    def _labels(bits: Tensor, N: int) -> Tensor:
        return (bits[:, N - 1:] == bits[:, : bits.shape[1] - N + 1]).long()  # (b, T - N + 1)
