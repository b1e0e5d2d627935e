"""Split nested training state into tensors and a JSON skeleton, and back.

safetensors stores a flat dict of tensors plus string metadata; a checkpoint holds nested
state (a model's state dict, an optimiser's state dict with int keys, a generator's state,
curriculum bookkeeping). `flatten_state` maps each tensor to a dotted path and records the
rest of the structure as JSON so that `unflatten_state` restores it exactly:

    {"model": {"w": t}, "optim": {"state": {0: {"step": s}}, "betas": (0.9, 0.99)}}
    -> tensors {"model.w": t, "optim.state.0.step": s}
       skeleton {"__dict__": [["model", {"__dict__": [["w", {"__tensor__": "model.w"}]]}],
                              ["optim", ...]]}

Dicts are stored as lists of [key, value] pairs so that int keys stay ints and key order is
kept; tuples and lists are told apart; an OrderedDict (a module's state dict) comes back as
one, with its `_metadata` (module versions, read by load_state_dict) where that is JSON.
Paths are only names: where two paths would coincide (a key "a.b" next to a dict "a" holding
"b", or keys 0 and "0") the later one gets a "#n" suffix, and the skeleton says which tensor
goes where.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from typing import Any

from torch import Tensor

from seqmem.errors import SeqmemError

TENSOR, DICT, LIST, TUPLE = "__tensor__", "__dict__", "__list__", "__tuple__"
ODICT, META = "__odict__", "__metadata__"  # an OrderedDict and its _metadata
ACCEPTED = "tensors, int, float, bool, str, None, dicts with str or int keys, lists, tuples"


def flatten_state(obj: Any) -> tuple[dict[str, Tensor], Any]:
    """Return (tensors by dotted path, JSON-able skeleton) for a nested structure.

    Leaves: tensors, int, float, bool, str, None. Containers: dicts with str or int keys,
    lists and tuples. Tensors are returned as they are (no copy); the skeleton holds every
    other leaf and records where each tensor goes. Anything else raises SeqmemError.
    """
    tensors: dict[str, Tensor] = {}

    def claim(path: str) -> str:
        path = path or "_"
        if path not in tensors:
            return path
        n = 1
        while f"{path}#{n}" in tensors:
            n += 1
        return f"{path}#{n}"

    def walk(o: Any, path: str) -> Any:
        if isinstance(o, Tensor):
            key = claim(path)
            tensors[key] = o
            return {TENSOR: key}
        if isinstance(o, dict):
            items = []
            for k, v in o.items():
                if not isinstance(k, str | int) or isinstance(k, bool):
                    raise SeqmemError(f"state key {k!r} ({type(k).__name__}) at "
                                      f"{path or 'the top'} cannot be stored; accepted: str, int")
                items.append([k, walk(v, f"{path}.{k}" if path else str(k))])
            if not isinstance(o, OrderedDict):
                return {DICT: items}
            out = {ODICT: items}
            meta = getattr(o, "_metadata", None)
            if isinstance(meta, dict):
                with contextlib.suppress(TypeError, ValueError):
                    out[META] = json.loads(json.dumps(meta))
            return out
        if isinstance(o, list | tuple):
            seq = [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(o)]
            return {TUPLE: seq} if isinstance(o, tuple) else {LIST: seq}
        if o is None or isinstance(o, bool | int | float | str):
            return o
        raise SeqmemError(f"cannot store a {type(o).__name__} at {path or 'the top'} in a "
                          f"checkpoint; accepted: {ACCEPTED}")

    return tensors, walk(obj, "")


def unflatten_state(tensors: dict[str, Tensor], skeleton: Any) -> Any:
    """Rebuild the structure `flatten_state` split: the exact inverse, int keys and tuples
    restored, each tensor put back (the same object) where the skeleton says."""
    if isinstance(skeleton, dict):
        if TENSOR in skeleton:
            key = skeleton[TENSOR]
            if key not in tensors:
                raise SeqmemError(f"the checkpoint has no tensor {key!r}; it has "
                                  f"{len(tensors)} tensors (file and skeleton disagree)")
            return tensors[key]
        if DICT in skeleton:
            return {k: unflatten_state(tensors, v) for k, v in skeleton[DICT]}
        if ODICT in skeleton:
            od = OrderedDict((k, unflatten_state(tensors, v)) for k, v in skeleton[ODICT])
            if META in skeleton:
                od._metadata = skeleton[META]  # type: ignore[attr-defined]
            return od
        if TUPLE in skeleton:
            return tuple(unflatten_state(tensors, v) for v in skeleton[TUPLE])
        if LIST in skeleton:
            return [unflatten_state(tensors, v) for v in skeleton[LIST]]
        raise SeqmemError(f"not a state skeleton: a dict with keys {sorted(skeleton)}; "
                          f"accepted: one of {TENSOR}, {DICT}, {ODICT}, {LIST}, "
                          f"{TUPLE}")
    if isinstance(skeleton, list):
        raise SeqmemError("not a state skeleton: a bare list (lists are stored under "
                          f"{LIST!r})")
    return skeleton
