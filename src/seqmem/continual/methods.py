"""The registered continual-learning methods (what is trained on each step, and what holds
earlier experiences), and `build_method`, which builds one by name.

- `finetune`: the current experience only (the lower bound), `seqmem.continual.base`.
- `ewc`, `si`: regularisation, `seqmem.continual.regularization`.
- `joint`, `multihead`, `replay`: rehearsal, `seqmem.continual.rehearsal`.
- `hnet`, `rnn_hnet`: task-conditioned hypernetworks, `seqmem.continual.hnet`.
- `sparse`: dynamic sparse training (prune and regrow), `seqmem.continual.sparse`.

A new method is one module that subclasses `Method` and registers it with
`@register_method("name")` (see `seqmem.continual.base` for the contract), imported here.
`METHODS` lists the names in registration order, "finetune" first.
"""

from seqmem.continual import hnet, regularization, rehearsal, sparse  # noqa: F401  (registers)
from seqmem.continual.base import Method, build_method, experience_loss, method_names
from seqmem.continual.rehearsal import ReservoirBuffer

METHODS = tuple(method_names())

__all__ = ["METHODS", "Method", "ReservoirBuffer", "build_method", "experience_loss"]
