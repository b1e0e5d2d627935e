"""Errors seqmem raises for bad input.

Every error names what was wrong and what is accepted, in one line, so the CLI can print it
as is (no traceback) and exit non-zero.
"""

from __future__ import annotations


class SeqmemError(ValueError):
    """Bad input given to seqmem: a name, a shape, a value or a config key."""


class ConfigError(SeqmemError):
    """A config key is unknown or a value is invalid; the message gives its dotted path."""


class RunFailed(RuntimeError):
    """A run stopped because training could not go on (e.g. a non-finite loss)."""


def check_choice(what: str, value: str, accepted) -> str:
    """Return `value` if it is one of `accepted`, else raise a one-line SeqmemError."""
    accepted = list(accepted)
    if value not in accepted:
        raise SeqmemError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")
    return value
