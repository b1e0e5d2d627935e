"""Errors seqmem raises for bad input, and the argument checks every tier shares.

Every error names what was wrong and what is accepted, in one line, so the CLI can print it
as is (no traceback) and exit non-zero.
"""

from __future__ import annotations


class SeqmemError(ValueError):
    """Bad input given to seqmem: a name, a shape, a value or a config key."""


class ConfigError(SeqmemError):
    """A config key is unknown or a value is invalid.

    `path` is the dotted path of the offending key (e.g. "model.mixer.tau_init"; "" when the
    problem is not one key's) and `problem` what is wrong with it; `str(error)` is the one-line
    message "path: problem". `within(prefix)` returns the same error one level further down,
    so validators can raise with the path they know and callers add theirs.
    """

    def __init__(self, problem: str, path: str = ""):
        self.problem, self.path = problem, path
        super().__init__(f"{path}: {problem}" if path else problem)

    def within(self, prefix: str) -> ConfigError:
        return ConfigError(self.problem, f"{prefix}.{self.path}" if self.path else prefix)


class RunFailed(RuntimeError):
    """A run stopped because training could not go on (e.g. a non-finite loss)."""


def check_choice(what: str, value: str, accepted) -> str:
    """Return `value` if it is one of `accepted`, else raise a one-line SeqmemError."""
    accepted = list(accepted)
    if value not in accepted:
        raise SeqmemError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")
    return value


def check_int(what: str, value, *, low: int = 1) -> int:
    """Return `value` if it is an integer >= low (bool excluded), else raise a SeqmemError
    "<what> must be an integer >= <low>, got <value>". `what` names the argument and, where
    it helps, its owner ("gla: n_heads")."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SeqmemError(f"{what} must be an integer >= {low}, got {value!r}")
    return value
