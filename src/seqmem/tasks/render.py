"""Text rendering of task examples: what a model reads and where it is asked what.

`render(task, batch, i)` writes example i as one line of steps, each supervised step followed
by its target as `[->label]` (heads separated by commas); runs of >= 4 unsupervised steps of a
filler token (one in the task's `quiet_tokens`, e.g. noise or padding) are shortened to
`token×n`. Token tasks show `task.vocab` strings; real-valued inputs
show their values (2 decimals; the first 4 channels) and, for one channel, a sparkline. Target
class ids are named by `task.classes` when a task sets it, else shown as numbers. A last line
lists the example's facts: scalar meta values and per-example (b,) meta tensors.
"""

from __future__ import annotations

import torch

from seqmem.errors import SeqmemError

SPARK = "▁▂▃▄▅▆▇█"
RUN = 4  # shortest run of a quiet token that is shortened


def step_words(task, batch, i: int) -> list[str]:
    """The input of every step of example i as a short string."""
    x = batch.inputs[i]
    if task.vocab is not None:
        return [task.vocab[k] for k in x.tolist()]
    x = x.reshape(x.shape[0], -1)  # (t, d)
    if x.shape[1] == 1:
        return [f"{v:.2f}" for v in x[:, 0].tolist()]
    more = " …" if x.shape[1] > 4 else ""
    return ["(" + " ".join(f"{v:.2f}" for v in row[:4]) + more + ")" for row in x.tolist()]


def target_label(task, batch, i: int, s: int) -> str:
    """The targets of example i at step s, named by `task.classes` if set (real-valued
    targets of a regression task: 2 decimals)."""
    if batch.targets.is_floating_point():
        return ",".join(f"{v:.2f}" for v in batch.targets[i, s].tolist())
    names = getattr(task, "classes", None)
    return ",".join(names[c] if names is not None else str(c)
                    for c in batch.targets[i, s].tolist())


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the values' min and max."""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARK[min(int((v - lo) / span * len(SPARK)), len(SPARK) - 1)] for v in values)


def facts(batch, i: int) -> str:
    """Scalar meta values and example i's entry of per-example (b,) meta tensors."""
    b = batch.mask.shape[0]
    out = []
    for key, v in batch.meta.items():
        if isinstance(v, torch.Tensor):
            if v.dim() == 1 and v.shape[0] == b:
                out.append(f"{key}={v[i].item():.4g}" if v.is_floating_point()
                           else f"{key}={v[i].item()}")
        elif isinstance(v, (int, float, str, bool)):
            out.append(f"{key}={v}")
        elif isinstance(v, (list, tuple)) and len(v) <= 8:
            out.append(f"{key}={list(v)}")
    return ", ".join(out)


def check_index(batch, i) -> None:
    """Raise a one-line SeqmemError unless i indexes an example of `batch`."""
    b = batch.mask.shape[0]
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < b:
        raise SeqmemError(f"example index must be an integer in 0..{b - 1}, got {i!r}")


def render(task, batch, i: int) -> str:
    """Example i of `batch` as text: its steps, targets marked `[->label]`, then its facts."""
    check_index(batch, i)
    t = batch.mask.shape[1]
    words = step_words(task, batch, i)
    quiet = set(getattr(task, "quiet_tokens", ()))
    mask = batch.mask[i].tolist()
    out, s = [], 0
    while s < t:
        if mask[s]:
            out.append(f"{words[s]}[->{target_label(task, batch, i, s)}]")
            s += 1
            continue
        e = s
        while e < t and not mask[e] and words[e] == words[s] and words[s] in quiet:
            e += 1
        if e - s >= RUN:
            out.append(f"{words[s]}×{e - s}")
            s = e
        else:
            out.append(words[s])
            s += 1
    lines = [" ".join(out)]
    if task.vocab is None and batch.inputs[i].reshape(t, -1).shape[1] == 1:
        lines.insert(0, sparkline(batch.inputs[i].reshape(t).tolist()))
    info = facts(batch, i)
    if info:
        lines.append(info)
    return "\n".join(lines)

