"""One registry mechanism for every family of named builders (mixers, tasks, continual
methods and protocols).

A family's module keeps a `Registry` and exposes its bound methods as the public API
(`register`, `names`, `get`, `build`), so every family reports unknown names and options
with the same one-line errors. A builder is a class (its options are the keyword-only
parameters of its constructor) or a function (the keyword-only parameters of the function).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from seqmem.errors import SeqmemError

B = TypeVar("B", bound=Callable)


def hyperparameters(builder: Callable) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of a class's constructor, or of a function."""
    sig = inspect.signature(builder.__init__ if isinstance(builder, type) else builder)
    return {
        n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


class Registry:
    """Short names -> builders of one family (`what` names the family in messages).

    `names()` lists them sorted, or in the order they were registered if `sort=False` (for a
    family whose first entry is its default or baseline).
    """

    def __init__(self, what: str, *, sort: bool = True):
        self.what, self.sort = what, sort
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[B], B]:
        """Decorator: register a class or function under a short name (sets its `name`)."""

        def deco(builder: B) -> B:
            if name in self._builders and self._builders[name] is not builder:
                raise SeqmemError(f"{self.what} name {name!r} is already registered")
            builder.name = name
            self._builders[name] = builder
            return builder

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted (in registration order if the registry has sort=False)."""
        return sorted(self._builders) if self.sort else list(self._builders)

    def get(self, name: str) -> Callable:
        if name not in self._builders:
            raise SeqmemError(f"unknown {self.what} {name!r}; accepted: "
                              f"{', '.join(self.names())}")
        return self._builders[name]

    def check_options(self, name: str, kw: dict) -> Callable:
        """The builder registered as `name`, after checking `kw` names only its options."""
        builder = self.get(name)
        accepted = hyperparameters(builder)
        unknown = sorted(set(kw) - set(accepted))
        if unknown:
            raise SeqmemError(
                f"unknown option(s) {', '.join(unknown)} for {self.what} {name!r}; accepted: "
                f"{', '.join(accepted) or '(none)'}"
            )
        return builder

    def build(self, name: str, *args, **kw):
        """Call the builder registered as `name` with positional `args` and its checked
        keyword options `kw`."""
        return self.check_options(name, kw)(*args, **kw)
