"""Split nested training state into tensors and a JSON skeleton, and back.

safetensors stores flat dicts of tensors plus string metadata; a checkpoint holds nested
state (a model's state dict, an optimiser's state dict with int keys, a generator's state,
curriculum bookkeeping). `flatten_state` maps each tensor to a dotted path and records the
rest of the structure as JSON so that `unflatten_state` restores it exactly.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from seqmem.errors import SeqmemError


def flatten_state(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """Return (tensors by path, JSON-able skeleton) for a nested structure.

    Accepted leaves: tensors, int, float, bool, str, None. Containers: dicts with str or int
    keys, lists and tuples (both restored as they were).
    """
    tensors: dict[str, Tensor] = {}

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, Tensor):
            tensors[path] = o
            return {"__tensor__": path}
        if isinstance(o, dict):
            items = []
            for k, v in o.items():
                if not isinstance(k, str | int) or isinstance(k, bool):
                    raise SeqmemError(f"state key {k!r} at {path or 'top'} is not a str or int")
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(o, list | tuple):
            seq = [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(o)]
            return {"__tuple__": seq} if isinstance(o, tuple) else {"__list__": seq}
        if o is None or isinstance(o, bool | int | float | str):
            return o
        raise SeqmemError(f"cannot store {type(o).__name__} at {path or 'top'} in a checkpoint; "
                          f"accepted: tensors, numbers, strings, None, dicts, lists, tuples")

    return tensors, walk(obj, "")


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any) -> Any:
    """The exact inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {k: unflatten_state(tensors, v) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(tensors, v) for v in skeleton["__tuple__"])
        if "__list__" in skeleton:
            return [unflatten_state(tensors, v) for v in skeleton["__list__"]]
    return skeleton
