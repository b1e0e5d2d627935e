"""Recall and copying: MQAR, selective copying, induction heads, set disjointness.

- MQAR: Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré, "Zoology: measuring and
  improving recall in efficient language models", ICLR 2024 (Sec. 3.1, App. E); authors' code
  HazyResearch/zoology, `zoology/data/multiquery_ar.py`.
- Selective copying and induction heads: Gu & Dao, "Mamba: linear-time sequence modeling with
  selective state spaces", 2023 (Sec. 4.1, App. E.1); the generators they use are
  state-spaces/s4 `src/dataloaders/datasets/copying.py` (variable=True) and HazyResearch/safari
  `src/dataloaders/synthetics.py` (induction_head, one trigger).
- Set disjointness: Arora, Timalsina, Singhal, Spector, Eyuboglu, Zhao, Rao, Rudra & Ré, "Just
  read twice: closing the recall gap for recurrent language models", 2024 (Sec. 3.2, App. D);
  authors' code HazyResearch/prefix-linear-attention, `synthetic/zoology/data/non_autoreg.py`.

All four are token tasks whose answer is a token of the vocabulary: the target class ids are
token ids (`heads = [len(vocab)]`), as in the papers' next-token read-outs. The length option
is `seq_len` (the batch length t); test at longer lengths with `--eval.lengths`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from seqmem.errors import SeqmemError
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register


def _random_subsets(b: int, n_pool: int, k: int, g: torch.Generator) -> Tensor:
    """(b, k) distinct indices in [0, n_pool) per row, a uniformly random ordered k-subset."""
    return torch.rand(b, n_pool, generator=g).topk(k, dim=1).indices  # (b, k)


@register("mqar")
class MQAR(Task):
    """Multi-query associative recall: recall each key's value when the key is queried again.

    Zoology (Arora et al. 2023), exactly as its generator: keys from 1 .. V/2 - 1, values from
    V/2 .. V - 1, n_pairs distinct keys and values per example; context k1 v1 k2 v2 ...; the
    (seq_len - 2 n_pairs) // 2 query slots after it are chosen without replacement with
    P(slot j) ~ j^(alpha - 1) (j = 1, 2, ...), the k-th chosen slot receiving key k at offset
    2 (j - 1); the target, the key's value, sits at the query's own position. Filler is token 0
    (random tokens with random_filler=True, as Zoology's `random_non_queries`).
    meta: {"seq_len", "n_pairs", "lag": (b, t) query position minus its key's position, 0 off
    the mask}.

    seqmem's choices: seq_len may be odd (Zoology asserts even); vocab_size need not exceed
    seq_len. Defaults: seq_len 64, 4 pairs, alpha 0.01, zero filler as Zoology, and a vocabulary
    of 64 where Zoology uses 8,192 (`vocab_size=8192` for the paper's setting): with 8,192
    tokens a 2-layer attention model (d_model 64, batch 64) learned nothing in 300 updates on
    a 2-core CPU, with 64 it reached 26 % accuracy.

    Args:
        seq_len: tokens per sequence, context and queries.
        n_pairs: key-value pairs per example (each key queried once).
        vocab_size: token vocabulary V (keys below V/2, values above).
        alpha: query-position power law: P(slot j) ~ j^(alpha - 1).
        random_filler: random tokens instead of 0 between the queries.
    """

    train_defaults: ClassVar[dict] = {"batch_size": 64, "eval_batches": 4}
    paper_setting: ClassVar[str] = ("Zoology (Arora et al. 2023), Fig. 2: vocabulary 8,192, "
                                    "100,000 training and 3,000 test examples, batch 256, the "
                                    "learning rate swept over 1e-4..1e-2")

    def __init__(self, *, seq_len: int = 64, n_pairs: int = 4, vocab_size: int = 64,
                 alpha: float = 0.01, random_filler: bool = False):
        self.n_pairs = check_int("n_pairs", n_pairs, low=1)
        self.seq_len = check_int("seq_len", seq_len, low=4)
        self.vocab_size = check_int("vocab_size", vocab_size, low=4)
        if seq_len < 4 * n_pairs:
            raise SeqmemError(f"seq_len must be >= 4 * n_pairs (a context and one query slot per "
                              f"pair), got seq_len={seq_len}, n_pairs={n_pairs}")
        if n_pairs > vocab_size // 2 - 1:
            raise SeqmemError(f"n_pairs must be <= vocab_size // 2 - 1 (distinct keys), got "
                              f"n_pairs={n_pairs}, vocab_size={vocab_size}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise SeqmemError(f"alpha must be a number > 0 (power law j^(alpha-1)), got {alpha!r}")
        self.alpha = float(alpha)
        if not isinstance(random_filler, bool):
            raise SeqmemError(f"random_filler must be true or false, got {random_filler!r}")
        self.random_filler = random_filler
        half = vocab_size // 2
        self.vocab = ["_"] + [f"k{j}" for j in range(1, half)] + [
            f"v{j}" for j in range(vocab_size - half)]
        self.classes = self.vocab
        self.quiet_tokens = ("_",)
        self.d_input = vocab_size
        self.heads = [vocab_size]

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of contexts of n_pairs key-value pairs followed by power-law placed queries."""
        check_sample_args(self, batch_size, generator)
        b, n, t, V = batch_size, self.n_pairs, self.seq_len, self.vocab_size
        half = V // 2
        keys = 1 + _random_subsets(b, half - 1, n, generator)  # (b, n)
        values = half + _random_subsets(b, V - half, n, generator)  # (b, n)
        space = (t - 2 * n) // 2
        p = torch.arange(1, space + 1, dtype=torch.float64) ** (self.alpha - 1)  # (space,)
        slots = torch.multinomial(p.expand(b, space), n, replacement=False,
                                  generator=generator)  # (b, n), 0-based
        qpos = 2 * n + 2 * slots  # (b, n)
        inputs = torch.zeros(b, t, dtype=torch.long)  # (b, t)
        inputs[:, 0:2 * n:2] = keys
        inputs[:, 1:2 * n:2] = values
        inputs.scatter_(1, qpos, keys)
        if self.random_filler:
            noise = torch.randint(0, V, (b, t), generator=generator)  # (b, t)
            inputs = torch.where(inputs == 0, noise, inputs)
        targets = torch.zeros(b, t, 1, dtype=torch.long)  # (b, t, 1)
        targets[..., 0].scatter_(1, qpos, values)
        mask = torch.zeros(b, t, dtype=torch.bool)  # (b, t)
        mask.scatter_(1, qpos, True)
        lag = torch.zeros(b, t, dtype=torch.long)  # (b, t)
        lag.scatter_(1, qpos, qpos - 2 * torch.arange(n))
        return Batch(inputs, targets, mask, {"seq_len": t, "n_pairs": n, "lag": lag})


@register("selective_copy")
class SelectiveCopy(Task):
    """Selective copying: reproduce the data tokens scattered among noise, in order, at markers.

    Mamba (Gu & Dao 2023, Sec. 4.1.1), the s4 generator with variable=True: M data tokens ~
    U{1 .. A-2} at M sorted random positions (without replacement) among the first seq_len - M
    positions, noise token 0 elsewhere, then M marker tokens A - 1; the k-th marker's target
    is the k-th data token. meta: {"seq_len", "n_tokens", "lag": (b, t) marker position minus
    its data token's position, 0 off the mask}.

    seq_len counts everything, markers included: the s4 generator's L noise tokens are
    seq_len - 2 M. Paper scale: A = 16, M = 16, L = 4096 (seq_len = 4128); the laptop default
    is seq_len = 128 (L = 96).

    Args:
        seq_len: tokens per sequence, markers included.
        n_tokens: data tokens M to copy.
        vocab_size: vocabulary A, noise and marker included.
    """

    def __init__(self, *, seq_len: int = 128, n_tokens: int = 16, vocab_size: int = 16):
        self.n_tokens = check_int("n_tokens", n_tokens, low=1)
        self.vocab_size = check_int("vocab_size", vocab_size, low=3)
        self.seq_len = check_int("seq_len", seq_len, low=2)
        if seq_len < 2 * n_tokens:
            raise SeqmemError(f"seq_len must be >= 2 * n_tokens (data tokens and markers), got "
                              f"seq_len={seq_len}, n_tokens={n_tokens}")
        self.vocab = ["."] + [str(k) for k in range(1, vocab_size - 1)] + ["*"]
        self.classes = self.vocab
        self.quiet_tokens = (".",)
        self.d_input = vocab_size
        self.heads = [vocab_size]

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of noisy sequences with M data tokens, then M markers to copy them at."""
        check_sample_args(self, batch_size, generator)
        b, M, t, A = batch_size, self.n_tokens, self.seq_len, self.vocab_size
        tokens = torch.randint(1, A - 1, (b, M), generator=generator)  # (b, M)
        pos = _random_subsets(b, t - M, M, generator).sort(dim=1).values  # (b, M)
        inputs = torch.zeros(b, t, dtype=torch.long)  # (b, t)
        inputs.scatter_(1, pos, tokens)
        inputs[:, t - M:] = A - 1
        targets = torch.zeros(b, t, 1, dtype=torch.long)  # (b, t, 1)
        targets[:, t - M:, 0] = tokens
        mask = torch.zeros(b, t, dtype=torch.bool)  # (b, t)
        mask[:, t - M:] = True
        lag = torch.zeros(b, t, dtype=torch.long)  # (b, t)
        lag[:, t - M:] = torch.arange(t - M, t) - pos
        return Batch(inputs, targets, mask, {"seq_len": t, "n_tokens": M, "lag": lag})


@register("induction_heads")
class InductionHeads(Task):
    """Induction heads: after the trigger token reappears at the end, output the token that
    followed its first occurrence.

    Mamba (Gu & Dao 2023, Sec. 4.1.2), the safari generator with one trigger: tokens ~
    U(content vocabulary), a trigger "=>" at position p ~ U{0 .. t-4} (the token after it
    stays), the trigger again at t - 1, the target there is the token at p + 1.
    meta: {"seq_len", "trigger_pos": (b,), "lag": (b,) = t - 2 - p}.

    seqmem's choices: only the last position is supervised (safari also trains on the
    unpredictable next tokens of the random prefix and scores only the last); the content
    vocabulary is vocab_size - 1 tokens (safari reserves an unused no-op token as well).
    Paper scale: vocab 16, train seq_len 256, tests up to 2^20; test longer lengths with
    `--eval.lengths`.

    Args:
        seq_len: tokens per sequence.
        vocab_size: vocabulary, the trigger included.
    """

    train_defaults: ClassVar[dict] = {"batch_size": 32, "eval_batches": 4}
    paper_setting: ClassVar[str] = ("Gu & Dao 2023: vocabulary 16, trained at length 256, "
                                    "tested at lengths up to 2^20")

    def __init__(self, *, seq_len: int = 256, vocab_size: int = 16):
        self.seq_len = check_int("seq_len", seq_len, low=4)
        self.vocab_size = check_int("vocab_size", vocab_size, low=3)
        self.vocab = [str(k) for k in range(vocab_size - 1)] + ["=>"]
        self.classes = self.vocab
        self.d_input = vocab_size
        self.heads = [vocab_size]

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of random sequences with one trigger-token pair and the trigger at the end."""
        check_sample_args(self, batch_size, generator)
        b, t, trig = batch_size, self.seq_len, self.vocab_size - 1
        inputs = torch.randint(0, trig, (b, t), generator=generator)  # (b, t)
        p = torch.randint(0, t - 3, (b,), generator=generator)  # (b,)
        rows = torch.arange(b)
        inputs[rows, p] = trig
        inputs[:, -1] = trig
        targets = torch.zeros(b, t, 1, dtype=torch.long)  # (b, t, 1)
        targets[:, -1, 0] = inputs[rows, p + 1]
        mask = torch.zeros(b, t, dtype=torch.bool)  # (b, t)
        mask[:, -1] = True
        return Batch(inputs, targets, mask, {"seq_len": t, "trigger_pos": p, "lag": t - 2 - p})


@register("set_disjointness")
class SetDisjointness(Task):
    """Set disjointness: name the one token that two lists share, after reading both.

    "Just read twice" (Arora et al. 2024), as its generator: per example the content vocabulary
    (ids 4 .. V-1) is shuffled and cut into halves (V // 2 and the rest); the first list (n_first
    tokens) is drawn without replacement from one half, the second (n_second) from the other;
    a random token of the first list overwrites a random position of the second. Sequence
    "<s> A | B =>"; the target, the shared token, at "=>" (the last position). Token 0 (mask) is
    unused, as in the generator. mixed_order=True swaps the two list lengths in a random half of
    the examples (both orders in one batch, one length). meta: {"seq_len", "first_len": (b,),
    "pos_first": (b,), "pos_second": (b,) positions of the shared token}.

    Paper scale: vocab 2,048; (first, second) lengths from (4, 16) to (256, 16) and reversed.

    Args:
        n_first: tokens of the first list.
        n_second: tokens of the second list.
        vocab_size: vocabulary, the four special tokens included.
        mixed_order: swap the two list lengths in a random half of the examples.
    """

    def __init__(self, *, n_first: int = 4, n_second: int = 16, vocab_size: int = 2048,
                 mixed_order: bool = False):
        self.n_first = check_int("n_first", n_first, low=1)
        self.n_second = check_int("n_second", n_second, low=1)
        self.vocab_size = check_int("vocab_size", vocab_size, low=6)
        if not isinstance(mixed_order, bool):
            raise SeqmemError(f"mixed_order must be true or false, got {mixed_order!r}")
        self.mixed_order = mixed_order
        half, rest = vocab_size // 2, vocab_size - 4 - vocab_size // 2
        if (mixed_order and max(n_first, n_second) > rest) or n_first > half or n_second > rest:
            raise SeqmemError(
                f"list lengths must fit the vocabulary halves ({half} and {rest} tokens for "
                f"vocab_size={vocab_size}), got n_first={n_first}, n_second={n_second}"
                + (" (mixed_order: both must fit the smaller half)" if mixed_order else ""))
        self.vocab = ["<mask>", "<s>", "|", "=>"] + [str(k) for k in range(4, vocab_size)]
        self.classes = self.vocab
        self.d_input = vocab_size
        self.heads = [vocab_size]

    def _examples(self, b: int, na: int, nb: int, g: torch.Generator) -> tuple[Tensor, ...]:
        V = self.vocab_size
        half = V // 2
        perm = 4 + torch.rand(b, V - 4, generator=g).argsort(dim=1)  # (b, V - 4) shuffled
        first = perm[:, :na]  # (b, na)
        second = perm[:, half:half + nb].clone()  # (b, nb)
        ia = torch.randint(0, na, (b,), generator=g)  # (b,)
        ib = torch.randint(0, nb, (b,), generator=g)
        rows = torch.arange(b)
        shared = first[rows, ia]  # (b,)
        second[rows, ib] = shared
        ones = torch.ones(b, 1, dtype=torch.long)
        seq = torch.cat([ones, first, 2 * ones, second, 3 * ones], dim=1)  # (b, na + nb + 3)
        return seq, shared, 1 + ia, na + 2 + ib

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of "<s> A | B =>" sequences whose lists share exactly one token."""
        check_sample_args(self, batch_size, generator)
        b, na, nb = batch_size, self.n_first, self.n_second
        seq, shared, pa, pb = self._examples(b, na, nb, generator)
        first_len = torch.full((b,), na)
        if self.mixed_order:
            seq2, shared2, pa2, pb2 = self._examples(b, nb, na, generator)
            swap = torch.rand(b, generator=generator) < 0.5  # (b,)
            seq = torch.where(swap[:, None], seq2, seq)
            shared, pa, pb = (torch.where(swap, x2, x) for x2, x in
                              ((shared2, shared), (pa2, pa), (pb2, pb)))
            first_len = torch.where(swap, nb, na)
        t = na + nb + 3
        targets = torch.zeros(b, t, 1, dtype=torch.long)  # (b, t, 1)
        targets[:, -1, 0] = shared
        mask = torch.zeros(b, t, dtype=torch.bool)  # (b, t)
        mask[:, -1] = True
        meta = {"seq_len": t, "first_len": first_len, "pos_first": pa, "pos_second": pb}
        return Batch(seq, targets, mask, meta)
