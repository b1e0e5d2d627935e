"""ListOps: the value of nested MIN / MAX / MED / SM expressions over the digits 0..9.

Nangia & Bowman, "ListOps: a diagnostic dataset for latent tree learning", NAACL SRW 2018,
in the Long Range Arena version: Tay, Dehghani, Abnar, Shen, Bahri, Pham, Rao, Yang, Ruder &
Metzler, "Long Range Arena: a benchmark for efficient transformers", ICLR 2021 (Sec. 3.1);
generator google-research/long-range-arena `lra_benchmarks/data/listops.py`.

Generator rules (LRA's): a node at depth < max_depth (the root has depth 1) is a leaf with
probability 0.75, else an operator; at max_depth always a leaf. A leaf is a digit ~ U{0..9};
an operator has U{2..max_args} arguments (each a node one level deeper) and an operator ~
U{MIN, MAX, MED, SM}: MED is the floor of the median, SM the sum mod 10. Tokens "[MAX 2 9 [MIN
4 7 ] 0 ]" (LRA's tokenizer drops the round brackets of its text); the length is the token
count, kept if min_len < length < max_len (strict, as LRA). Label = value (10 classes).
"""

from __future__ import annotations

import statistics
import zlib
from typing import ClassVar

import torch

from seqmem.errors import SeqmemError, check_choice
from seqmem.tasks.base import Batch, Task, check_int, check_sample_args, register

OPS = ("[MIN", "[MAX", "[MED", "[SM")
VOCAB = ["<pad>", *(str(d) for d in range(10)), *OPS, "]"]
_ID = {s: k for k, s in enumerate(VOCAB)}


def apply_op(op: str, args: list[int]) -> int:
    """The value of one ListOps operator over its argument values."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(statistics.median(args))  # floor of the median (values are >= 0)
    return sum(args) % 10


def uniforms(generator: torch.Generator, chunk: int = 8192):
    """An endless stream of uniforms in [0, 1) drawn from `generator` in chunks."""
    while True:
        yield from torch.rand(chunk, generator=generator, dtype=torch.float64).tolist()


def generate_tree(next_u, max_depth: int, max_args: int, max_len: int) -> list[int] | None:
    """Token ids of one LRA tree, drawing uniforms with `next_u()` in LRA's order (leaf test,
    then a leaf's digit, or an operator's argument count, its arguments, then the operator).
    None as soon as the tree reaches max_len tokens (it would be rejected anyway), so oversized
    trees cost little. An explicit stack replaces LRA's recursion."""
    tokens: list[int] = []
    stack: list[list[int]] = []  # per open operator: [token index, arguments left, depth]
    depth = 1
    while True:
        if depth < max_depth and next_u() <= 0.25:  # LRA: a leaf iff random() > 0.25
            n_args = 2 + int(next_u() * (max_args - 1))  # U{2 .. max_args}
            stack.append([len(tokens), n_args, depth])
            tokens.append(-1)  # the operator, drawn after its arguments
            depth += 1
            continue
        tokens.append(_ID[str(int(next_u() * 10))])
        while True:  # close every operator whose last argument this was
            if len(tokens) >= max_len:
                return None
            if not stack:
                return tokens
            top = stack[-1]
            top[1] -= 1
            if top[1] > 0:
                break
            stack.pop()
            tokens[top[0]] = _ID[OPS[int(next_u() * 4)]]
            tokens.append(_ID["]"])
        depth = stack[-1][2] + 1


def evaluate(tokens: list[int]) -> tuple[int, int]:
    """(value, depth) of a token-id expression, by a stack of open operators."""
    stack: list[tuple[str, list[int]]] = []
    depth, value = 0, -1
    for k in tokens:
        s = VOCAB[k]
        if s in OPS:
            stack.append((s, []))
            depth = max(depth, len(stack))
            continue
        if s == "]":
            op, args = stack.pop()
            value = apply_op(op, args)
        else:
            value = int(s)
        if stack:
            stack[-1][1].append(value)
    return value, depth + 1


def in_test_split(tokens: list[int], test_percent: int) -> bool:
    """True if an expression belongs to the test split: a stable hash of its token ids,
    crc32 mod 100, below test_percent. Train and test never share an expression."""
    return zlib.crc32(bytes(tokens)) % 100 < test_percent


@register("listops")
class ListOps(Task):
    """ListOps: the value (0..9) of a nested MIN/MAX/MED/SM expression, read at its last token.

    Long Range Arena's generator rules (Tay et al. 2021, Sec. 3.1; Nangia & Bowman 2018): see
    the module docstring. The examples of a batch are padded at the end with "<pad>" to the
    longest one; the only supervised position of an example is its last real token (the final
    "]"). meta: {"seq_len", "length": (b,) tokens before padding, "depth": (b,) tree depth}.

    seqmem's choices: laptop lengths (min_len 20, max_len 200; LRA keeps 500 < length < 2000,
    set min_len=500 max_len=2000 for it); trees are drawn afresh for every batch (LRA draws one
    set of 100k unique trees), and the splits are made disjoint by hashing each expression's
    token ids: an expression is in the test split iff crc32 mod 100 < test_percent (10).
    Generation is a Python walk over uniforms drawn in chunks, abandoned as soon as a tree
    reaches max_len tokens (about 0.1 s for 64 examples at the default lengths).

    Args:
        min_len: expressions must be longer than this (tokens).
        max_len: expressions must be shorter than this (tokens).
        max_depth: deepest nesting of operators.
        max_args: most arguments of one operator.
        split: "train" or "test" (disjoint by a hash of each expression).
        test_percent: percent of expressions that fall in the test split.
    """

    train_defaults: ClassVar[dict] = {"batch_size": 32, "eval_batches": 4}
    paper_setting: ClassVar[str] = ("Long Range Arena (Tay et al. 2021): lengths 500..2,000 "
                                    "(min_len=500 max_len=2000), batch 32")

    length_option: ClassVar[str] = "max_len"

    def __init__(self, *, min_len: int = 20, max_len: int = 200, max_depth: int = 10,
                 max_args: int = 10, split: str = "train", test_percent: int = 10):
        self.min_len = check_int("min_len", min_len, low=0)
        self.max_len = check_int("max_len", max_len, low=2)
        if max_len - min_len < 2:
            raise SeqmemError(f"lengths are kept if min_len < length < max_len, so max_len must "
                              f"be >= min_len + 2, got min_len={min_len}, max_len={max_len}")
        self.max_depth = check_int("max_depth", max_depth, low=1)
        self.max_args = check_int("max_args", max_args, low=2)
        if max_depth == 1 and min_len >= 1:
            raise SeqmemError(f"max_depth=1 gives single digits only (length 1); it needs "
                              f"min_len=0, got min_len={min_len}")
        self.split = check_choice("split", split, ("train", "test"))
        self.test_percent = check_int("test_percent", test_percent, low=1)
        if test_percent > 99:
            raise SeqmemError(f"test_percent must be in 1..99, got {test_percent}")
        self.vocab = list(VOCAB)
        self.classes = [str(d) for d in range(10)]
        self.quiet_tokens = ("<pad>",)
        self.d_input = len(self.vocab)
        self.heads = [10]

    def draw(self, next_u) -> list[int]:
        """Token ids of one accepted expression of this task's split."""
        want_test = self.split == "test"
        while True:
            tokens = generate_tree(next_u, self.max_depth, self.max_args, self.max_len)
            if (tokens is not None and self.min_len < len(tokens) < self.max_len
                    and in_test_split(tokens, self.test_percent) == want_test):
                return tokens

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        """A batch of expressions, end-padded to one length, each labelled at its last token."""
        check_sample_args(self, batch_size, generator)
        next_u = uniforms(generator).__next__
        drawn = [self.draw(next_u) for _ in range(batch_size)]
        lengths = torch.tensor([len(tok) for tok in drawn])  # (b,)
        t = int(lengths.max())
        inputs = torch.zeros(batch_size, t, dtype=torch.long)  # (b, t), 0 = <pad>
        for i, tok in enumerate(drawn):
            inputs[i, : len(tok)] = torch.tensor(tok)
        value, depth = torch.tensor([evaluate(tok) for tok in drawn]).T  # (b,), (b,)
        last = lengths - 1  # (b,)
        rows = torch.arange(batch_size)
        targets = torch.zeros(batch_size, t, 1, dtype=torch.long)  # (b, t, 1)
        targets[rows, last, 0] = value
        mask = torch.zeros(batch_size, t, dtype=torch.bool)  # (b, t)
        mask[rows, last] = True
        return Batch(inputs, targets, mask, {"seq_len": t, "length": lengths, "depth": depth})
