"""The `power_law` protocol: the experiences of another protocol, each revisited after gaps drawn
from a power law.

In natural environments the chance that something is needed again falls as a power of the
time since it was last needed (Anderson & Schooler 1991, "Reflections of the environment in
memory"); Gandhi, Shah, Marupudi & Varma 2024 ("Catastrophic Interference is Mitigated in
Naturalistic Power-Law Learning Environments", arXiv 2401.10393) train networks in such
environments and find that the re-exposure alone mitigates forgetting. seqmem's environment:

- time runs in days d = 0, 1, 2, ...; experience k of the base protocol is first trained on
  day k;
- each time experience k is trained, its next exposure comes g days later, with the gap g
  drawn from the truncated discrete power law

      P(g) = g^(-a) / sum_{h=1}^{G} h^(-a),   g = 1, ..., G   (a = `exponent`, G = `max_gap`)

  (independently for each exposure, from one generator seeded by `seed`);
- the experiences due on a day are trained that day, one session each, in the order of their
  index; the stream of sessions is cut after `n_sessions`.

The protocol's experiences are the base protocol's (each evaluated after every session, so
the metrics stay defined over the distinct experiences, `seqmem.continual.metrics`); its
`schedule` is the experience of each session. With the same `steps` per session, a stream of
L sessions trains L / T times as many steps as the base protocol's T experiences: to compare
at one budget, give the base protocol `steps` x L / T (`power_law_schedule` says L).
"""

from __future__ import annotations

import torch

from seqmem.continual.base import Protocol, build_protocol, register_protocol
from seqmem.errors import SeqmemError, check_int


def power_law_pmf(exponent: float, max_gap: int) -> torch.Tensor:
    """P(g) = g^(-exponent) / sum_{h=1}^{max_gap} h^(-exponent) for g = 1..max_gap: (max_gap,)
    float64."""
    g = torch.arange(1, max_gap + 1, dtype=torch.float64)  # (G,)
    w = g ** (-float(exponent))
    return w / w.sum()


def power_law_gaps(n: int, *, exponent: float, max_gap: int,
                   generator: torch.Generator) -> torch.Tensor:
    """n independent gaps from `power_law_pmf(exponent, max_gap)`: (n,) long in 1..max_gap."""
    pmf = power_law_pmf(exponent, max_gap)
    return torch.multinomial(pmf, n, replacement=True, generator=generator) + 1


def _check(exponent, max_gap) -> None:
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) \
            or not 0 <= exponent < float("inf"):
        raise SeqmemError(f"power_law exponent must be a finite number >= 0, got {exponent!r}")
    check_int("power_law max_gap", max_gap, low=1)


def power_law_schedule(n_experiences: int, n_sessions: int, *, exponent: float = 1.5,
                       max_gap: int | None = None, generator: torch.Generator
                       ) -> tuple[list[int], list[int]]:
    """The experience and the day of each of the first `n_sessions` sessions of the power-law
    environment (module docstring): experience k first on day k, each exposure followed by one
    after a gap from `power_law_pmf(exponent, max_gap)` (max_gap None: n_sessions). Raises if
    the stream ends before every experience was trained once."""
    check_int("power_law n_experiences", n_experiences, low=1)
    check_int("power_law n_sessions", n_sessions, low=1)
    max_gap = n_sessions if max_gap is None else max_gap
    _check(exponent, max_gap)
    pmf = power_law_pmf(exponent, max_gap)
    due: dict[int, set[int]] = {}
    schedule: list[int] = []
    days: list[int] = []
    first_of_last = None  # the session that first trains the last experience
    day = 0
    while len(schedule) < n_sessions or first_of_last is None:
        today = set(due.pop(day, set()))
        if day < n_experiences:
            today.add(day)
        for k in sorted(today):
            if k == n_experiences - 1 and first_of_last is None:
                first_of_last = len(schedule)
            schedule.append(k)
            days.append(day)
            g = int(torch.multinomial(pmf, 1, generator=generator)) + 1
            due.setdefault(day + g, set()).add(k)
        day += 1
    if first_of_last >= n_sessions:
        raise SeqmemError(f"power_law: {n_sessions} sessions end before experience "
                          f"{n_experiences - 1} is first trained (session {first_of_last} with "
                          f"this seed); give n_sessions >= {first_of_last + 1}")
    return schedule[:n_sessions], days[:n_sessions]


@register_protocol("power_law")
def power_law(setting: str = "task", *, base: str = "n_curriculum",
              base_options: dict | None = None, n_sessions: int | None = None,
              exponent: float = 1.5, max_gap: int | None = None, seed: int = 0) -> Protocol:
    """The experiences of protocol `base` (with `base_options`, in `setting`), revisited
    after power-law gaps (Anderson & Schooler 1991; Gandhi et al. 2024).

    Args:
        base: the protocol whose experiences are revisited (any but power_law).
        base_options: that protocol's options, e.g. {n_max: 6}.
        n_sessions: sessions in the stream (None: 3 per experience); each trains `steps`.
        exponent: a in P(g) ~ g^(-a) of the gap g (in days) to an experience's next exposure.
        max_gap: the largest gap G (None: n_sessions).
        seed: the seed of the gaps' generator.
    """
    if base == "power_law":
        raise SeqmemError("power_law: base must be another protocol than power_law")
    if base_options is not None and not isinstance(base_options, dict):
        raise SeqmemError(f"power_law base_options must be a mapping of the base protocol's "
                          f"options, got {base_options!r}")
    inner = build_protocol(base, setting, **(base_options or {}))
    T = len(inner)
    n_sessions = 3 * T if n_sessions is None else n_sessions
    gen = torch.Generator().manual_seed(check_int("power_law seed", seed, low=0))
    schedule, _ = power_law_schedule(T, n_sessions, exponent=exponent, max_gap=max_gap,
                                     generator=gen)
    return Protocol(f"power_law_{inner.name}", inner.setting, inner.experiences, inner.d_input,
                    inner.vocab_size, schedule=schedule)


__all__ = ["power_law", "power_law_gaps", "power_law_pmf", "power_law_schedule"]
