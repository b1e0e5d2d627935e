"""One registry mechanism for every family of named classes (mixers, tasks).

A family's module keeps a `Registry` and exposes its bound methods as the public API
(`register`, `names`, `get`, `build`), so every family reports unknown names and options
with the same one-line errors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from seqmem.errors import SeqmemError


def hyperparameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword-only constructor hyperparameters of a class."""
    sig = inspect.signature(cls.__init__)
    return {
        n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


class Registry:
    """Short names -> classes of one family (`what` names the family in messages)."""

    def __init__(self, what: str):
        self.what = what
        self._classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register a class under a short name (sets `cls.name`)."""

        def deco(cls: type) -> type:
            if name in self._classes and self._classes[name] is not cls:
                raise SeqmemError(f"{self.what} name {name!r} is already registered")
            cls.name = name
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise SeqmemError(f"unknown {self.what} {name!r}; accepted: "
                              f"{', '.join(self.names())}")
        return self._classes[name]

    def check_options(self, name: str, kw: dict) -> type:
        """The class registered as `name`, after checking `kw` names only its options."""
        cls = self.get(name)
        accepted = hyperparameters(cls)
        unknown = sorted(set(kw) - set(accepted))
        if unknown:
            raise SeqmemError(
                f"unknown option(s) {', '.join(unknown)} for {self.what} {name!r}; accepted: "
                f"{', '.join(accepted) or '(none)'}"
            )
        return cls
