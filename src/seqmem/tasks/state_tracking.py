"""State tracking: parity, modular arithmetic (with and without brackets), permutation words.

The formal-language tasks used by Grazzi, Siems, Zela, Franke, Hutter & Pontil, "Unlocking
state-tracking in linear RNNs through negative eigenvalues", ICLR 2025 (Sec. 5.1, after
Delétang et al., "Neural networks and the Chomsky hierarchy", ICLR 2023, and Beck et al. 2024),
and the group word problems of Merrill, Petty & Sabharwal, "The illusion of state in
state-space models", ICML 2024 (Sec. 4), also used by Grazzi et al. (Sec. 5.2).

Lengths, as in those papers: one length L per batch, L ~ U{min_len .. max_len} (3 .. 40) for
split="train" and L ~ U{test_min_len .. test_max_len} (40 .. 256) for split="test"; `length`
> 0 fixes L (the option `--eval.lengths` sets). L counts the tokens of the word or expression;
mod_arith appends an "=" token, so its batch length is L + 1.

The read-out is a class id (2 for parity, `modulus` for mod_arith, |G| for permutation), so
the scaled accuracy (acc - 1/classes) / (1 - 1/classes) of the training loop uses the chance
level the papers use.
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from seqmem.errors import SeqmemError, check_choice
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register


class _StateTask(Task):
    """Shared options of the state-tracking tasks: splits and lengths."""

    length_option: ClassVar[str] = "length"
    min_word: ClassVar[int] = 1  # the shortest word the task can generate
    # Evaluation runs at the test lengths (40..256), which cost most of an epoch.
    train_defaults: ClassVar[dict] = {"batch_size": 64, "eval_batches": 4}
    paper_setting: ClassVar[str] = ("Grazzi et al. 2025: train lengths 3..40, test lengths "
                                    "40..256, scaled accuracy at the test lengths")

    def _init_lengths(self, split, length, min_len, max_len, test_min_len, test_max_len):
        self.split = check_choice("split", split, ("train", "test"))
        self.length = check_int("length", length, low=0)
        self.min_len = check_int("min_len", min_len, low=self.min_word)
        self.max_len = check_int("max_len", max_len, low=self.min_word)
        self.test_min_len = check_int("test_min_len", test_min_len, low=self.min_word)
        self.test_max_len = check_int("test_max_len", test_max_len, low=self.min_word)
        if 0 < length < self.min_word:
            raise SeqmemError(f"length must be 0 (draw from the split's range) or >= "
                              f"{self.min_word}, got {length}")
        if min_len > max_len or test_min_len > test_max_len:
            raise SeqmemError(
                f"length ranges must have min <= max, got min_len={min_len}, max_len={max_len}, "
                f"test_min_len={test_min_len}, test_max_len={test_max_len}")

    def _draw_length(self, generator: torch.Generator) -> int:
        if self.length:
            return self.length
        lo, hi = ((self.min_len, self.max_len) if self.split == "train"
                  else (self.test_min_len, self.test_max_len))
        return int(torch.randint(lo, hi + 1, (), generator=generator))


@register("parity")
class Parity(_StateTask):
    """Parity of a bit string: the answer (count of 1s mod 2) at the last token.

    Delétang et al. 2023 ("parity check"), as trained by Grazzi et al. 2025 (Sec. 5.1): bits
    ~ Bernoulli(0.5), one supervised position, the last input token; 2 classes (chance 0.5).
    Tokens "0"/"1" and classes "even"/"odd" (the papers' code writes the bits as tokens 1 and 2
    and the answer as 1 + parity: the same task relabelled). meta: {"length", "seq_len",
    "split", "n_ones": (b,)}.

    seqmem's choice: training words of 3..12 bits, where the papers train on 3..40
    (`max_len=40` for their setting). On a 2-core CPU an LSTM (d_model 128, AdamW 1e-3,
    batch 64) learned nothing from 3..40 in 120 s (loss 0.693 after 86 epochs), and from
    3..12 it reached accuracy 1.000 at the test lengths 40..256 within 11 epochs (under 30 s).

    Args:
        split: "train" or "test": which length range sequences are drawn from.
        length: a fixed word length for every batch (0: draw each batch's length from the
            split's range).
        min_len: shortest training word.
        max_len: longest training word.
        test_min_len: shortest test word.
        test_max_len: longest test word.
    """

    paper_setting: ClassVar[str] = ("Grazzi et al. 2025: train lengths 3..40 (task.max_len=40; "
                                    "seqmem's default 12), test lengths 40..256, scaled "
                                    "accuracy at the test lengths")

    def __init__(self, *, split: str = "train", length: int = 0, min_len: int = 3,
                 max_len: int = 12, test_min_len: int = 40, test_max_len: int = 256):
        self._init_lengths(split, length, min_len, max_len, test_min_len, test_max_len)
        self.vocab = ["0", "1"]
        self.classes = ["even", "odd"]
        self.d_input = len(self.vocab)
        self.heads = [2]

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of bit strings of one length, the parity at the last position."""
        check_sample_args(self, batch_size, generator)
        L = self._draw_length(generator)
        bits = torch.randint(0, 2, (batch_size, L), generator=generator)  # (b, L)
        n_ones = bits.sum(1)  # (b,)
        targets = torch.zeros(batch_size, L, 1, dtype=torch.long)  # (b, L, 1)
        targets[:, -1, 0] = n_ones % 2
        mask = torch.zeros(batch_size, L, dtype=torch.bool)  # (b, L)
        mask[:, -1] = True
        meta = {"length": L, "seq_len": L, "split": self.split, "n_ones": n_ones}
        return Batch(bits, targets, mask, meta)


# ---- modular arithmetic ---------------------------------------------------------------------
def _segmented_product(values: Tensor, starts: Tensor, modulus: int) -> Tensor:
    """Inclusive product mod `modulus` along dim 1, restarted wherever `starts` is True.

    A Hillis-Steele scan of the pairs (start flag, value) under the associative rule
    (f1, v1) . (f2, v2) = (f1 | f2, v2 if f2 else v1 v2): ceil(log2 n) vectorised passes.
    """
    v, f = values.clone(), starts.clone()  # (b, n)
    d = 1
    while d < v.shape[1]:
        pv = torch.nn.functional.pad(v[:, :-d], (d, 0), value=1)  # (b, n), element i - d
        pf = torch.nn.functional.pad(f[:, :-d], (d, 0), value=True)
        v = torch.where(f, v, (pv * v) % modulus)
        f = f | pf
        d *= 2
    return v


def _bracket_expression(L: int, u: list[float], m: int) -> tuple[list[str], int]:
    """One bracketed expression of exactly L tokens and its value mod m (Delétang et al.'s
    grammar, operators + and -), consuming the uniforms `u` from the end."""
    if L <= 4:
        d = int(u.pop() * m)
        return {1: ([str(d)], d), 2: (["-", str(d)], -d % m), 3: (["(", str(d), ")"], d),
                4: (["(", "-", str(d), ")"], -d % m)}[L]
    left_len = 1 + int(u.pop() * (L - 4))  # U{1 .. L-4}
    op = "+" if u.pop() < 0.5 else "-"
    left, a = _bracket_expression(left_len, u, m)
    right, c = _bracket_expression(L - left_len - 3, u, m)
    return ["(", *left, op, *right, ")"], (a + c if op == "+" else a - c) % m


@register("mod_arith")
class ModArith(_StateTask):
    """Modular arithmetic: the value mod 5 of an expression, answered at its "=" token.

    Delétang et al. 2023 / Grazzi et al. 2025 (Sec. 5.1). brackets=False: numbers ~ U{0..m-1}
    alternating with operators ~ U{+, -, *}, usual precedence (* first, then left to right);
    an even L is lowered by one (expressions have odd length), as in Delétang et al.
    brackets=True: Delétang et al.'s grammar, exactly L tokens: 1 "n", 2 "- n", 3 "( n )",
    4 "( - n )", L >= 5 "( A op B )" with len(A) ~ U{1..L-4} and op ~ U{+, -}. The answer
    (mod m, non-negative; `modulus` classes) is supervised at the appended "=" token.
    meta: {"length" (L), "seq_len" (L + 1), "split"}.

    seqmem's choices: the "=" token (the papers' code reads the answer after the last
    expression token); the bracketed expressions are generated by a Python recursion over
    uniforms drawn in one call (fast enough: about 10 ms for 64 expressions of 256 tokens).

    Args: as `parity` (split and lengths), and
        brackets: Delétang et al.'s bracketed grammar (operators + and -) instead of
            numbers and operators alternating.
        modulus: the modulus m: m number tokens and m classes.
    """

    def __init__(self, *, brackets: bool = False, modulus: int = 5, split: str = "train",
                 length: int = 0, min_len: int = 3, max_len: int = 40, test_min_len: int = 40,
                 test_max_len: int = 256):
        if not isinstance(brackets, bool):
            raise SeqmemError(f"brackets must be true or false, got {brackets!r}")
        self.brackets = brackets
        self.modulus = check_int("modulus", modulus, low=2)
        self._init_lengths(split, length, min_len, max_len, test_min_len, test_max_len)
        self.vocab = [str(k) for k in range(modulus)] + ["+", "-", "*", "(", ")", "="]
        self.classes = [str(k) for k in range(modulus)]
        self.d_input = len(self.vocab)
        self.heads = [modulus]
        self._id = {s: k for k, s in enumerate(self.vocab)}

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of expressions of one length, each followed by "=", the value there."""
        check_sample_args(self, batch_size, generator)
        L = self._draw_length(generator)
        if self.brackets:
            expr, value = self._bracketed(batch_size, L, generator)
        else:
            L -= 1 - L % 2  # odd
            expr, value = self._flat(batch_size, L, generator)
        b = batch_size
        eq = torch.full((b, 1), self._id["="], dtype=torch.long)
        inputs = torch.cat([expr, eq], dim=1)  # (b, L + 1)
        targets = torch.zeros(b, L + 1, 1, dtype=torch.long)  # (b, L + 1, 1)
        targets[:, -1, 0] = value
        mask = torch.zeros(b, L + 1, dtype=torch.bool)  # (b, L + 1)
        mask[:, -1] = True
        return Batch(inputs, targets, mask, {"length": L, "seq_len": L + 1, "split": self.split})

    def _flat(self, b: int, L: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        m, k = self.modulus, L // 2
        nums = torch.randint(0, m, (b, k + 1), generator=g)  # (b, k + 1)
        ops = torch.randint(0, 3, (b, k), generator=g)  # (b, k): 0 +, 1 -, 2 *
        expr = torch.empty(b, L, dtype=torch.long)  # (b, L)
        expr[:, 0::2] = nums
        expr[:, 1::2] = ops + self._id["+"]
        # A term starts at the first number and after every + or -; its sign is that operator's.
        starts = torch.cat([torch.ones(b, 1, dtype=torch.bool), ops != 2], dim=1)  # (b, k + 1)
        sign = torch.cat([torch.ones(b, 1, dtype=torch.long),
                          torch.where(ops == 1, -1, 1)], dim=1)  # (b, k + 1)
        sign = torch.where(starts, sign, 0)
        term_sign = torch.gather(sign, 1, torch.cummax(
            torch.where(starts, torch.arange(k + 1), 0).expand(b, k + 1), dim=1).values)
        prod = _segmented_product(nums, starts, m)  # (b, k + 1)
        ends = torch.cat([starts[:, 1:], torch.ones(b, 1, dtype=torch.bool)], dim=1)
        value = (torch.where(ends, term_sign * prod, 0).sum(1)) % m  # (b,)
        return expr, value

    def _bracketed(self, b: int, L: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        u_all = torch.rand(b, 2 * L, generator=g, dtype=torch.float64).tolist()
        exprs, values = [], []
        for u in u_all:  # a recursive grammar: one Python walk per expression
            tokens, v = _bracket_expression(L, u, self.modulus)
            exprs.append([self._id[s] for s in tokens])
            values.append(v)
        return torch.tensor(exprs, dtype=torch.long), torch.tensor(values, dtype=torch.long)


# ---- permutation word problems ---------------------------------------------------------------
def group_elements(group: str) -> list[tuple[int, ...]]:
    """Elements of S3, S5 or A5 as permutation tuples p (p[k] = image of k), in
    lexicographic order, so that element 0 is the identity."""
    n = int(group[1])
    perms = list(itertools.permutations(range(n)))
    if group[0] == "A":
        perms = [p for p in perms if _is_even(p)]
    return perms


def _is_even(p: tuple[int, ...]) -> bool:
    inversions = sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p)))
    return inversions % 2 == 0


@register("permutation")
class Permutation(_StateTask):
    """Group word problem: the running product of permutations over S3, S5 or A5 at every step.

    Merrill et al. 2024 (Sec. 4) and Grazzi et al. 2025 (Sec. 5.2): tokens x_i are group
    elements drawn uniformly (inputs="all"), or uniformly among the transpositions
    (inputs="swaps", S3/S5 only); the target at step i is the element y_i = x_1 x_2 ... x_i,
    with the product read left to right, "x_1 first": y_i(k) = x_i(y_{i-1}(k)). Every position
    is supervised; |G| classes (6, 120, 60). Elements are indexed in lexicographic order of
    their one-line notation (0 = identity) and named by it ("10234" swaps 0 and 1).
    meta: {"length", "seq_len", "split", "group"}.

    seqmem's choices: the "x_1 first" composition order and the name "swaps" for the
    transposition-only inputs (identity excluded).

    Args: as `parity` (split and lengths), and
        group: S3, S5 or A5.
        inputs: "all" (every group element) or "swaps" (transpositions only; S3 and S5).
    """

    def __init__(self, *, group: str = "S5", inputs: str = "all", split: str = "train",
                 length: int = 0, min_len: int = 3, max_len: int = 40, test_min_len: int = 40,
                 test_max_len: int = 256):
        self.group = check_choice("group", group, ("S3", "S5", "A5"))
        self.inputs = check_choice("inputs", inputs, ("all", "swaps"))
        if inputs == "swaps" and group == "A5":
            raise SeqmemError("inputs='swaps' needs group S3 or S5 (A5 holds no transposition); "
                              "use inputs='all' for A5")
        self._init_lengths(split, length, min_len, max_len, test_min_len, test_max_len)
        elems = group_elements(group)
        index = {p: k for k, p in enumerate(elems)}
        # table[a, c] = index of "a then c": k -> c[a[k]]
        table = np.array([[index[tuple(c[a[k]] for k in range(len(a)))] for c in elems]
                          for a in elems], dtype=np.int64)
        self._table = torch.tensor(table.reshape(-1))  # (|G| * |G|,)
        swaps = [k for k, p in enumerate(elems) if sum(p[j] != j for j in range(len(p))) == 2]
        self._draw = torch.tensor(swaps if inputs == "swaps" else range(len(elems)))
        self.vocab = ["".join(map(str, p)) for p in elems]
        self.classes = list(self.vocab)
        self.d_input = len(self.vocab)
        self.heads = [len(elems)]

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of words of one length and their running products."""
        check_sample_args(self, batch_size, generator)
        L = self._draw_length(generator)
        pick = torch.randint(0, len(self._draw), (batch_size, L), generator=generator)
        x = self._draw[pick]  # (b, L)
        n = self.heads[0]
        y = x.clone()  # (b, L): Hillis-Steele scan of the (associative) group product
        d = 1
        while d < L:
            y = torch.cat([y[:, :d], self._table[y[:, :-d] * n + y[:, d:]]], dim=1)
            d *= 2
        mask = torch.ones(batch_size, L, dtype=torch.bool)  # (b, L)
        meta = {"length": L, "seq_len": L, "split": self.split, "group": self.group}
        return Batch(x, y.unsqueeze(-1), mask, meta)
