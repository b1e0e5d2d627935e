"""Dynamic sparse training for continual learning: a fixed fraction of each weight matrix is
zero, and the pattern of zeros changes by prune-and-regrow steps (Yildirim, Gok, Ozgur,
Wolfe & Tuytelaars 2023, "Continual Learning with Dynamic Sparse Training: Exploring
Algorithms for Effective Model Updates", CoLLAs).

- What is sparse: the weight matrices of the sequence layers (every parameter of the blocks
  with two or more dimensions, except the log-parameterised ones such as `A_log`, whose zero
  is no missing connection); the encoder and the read-out heads stay dense.
- At the start, each such tensor keeps a random `1 - sparsity` of its entries (exactly
  round((1 - sparsity) n) of n), drawn from the method's generator stream 1; the others are 0.
- The masked entries are exactly zero throughout: their gradients are zeroed as they are
  computed and the weights are multiplied by the mask after every optimizer step.
- A prune-and-regrow update, at each experience boundary (before every experience but the
  first) and, if `update_every` > 0, every `update_every` steps within an experience: per
  tensor, k = round(prune_fraction x active) active entries of smallest magnitude are pruned
  (set to 0, masked) and exactly k of the entries that were inactive before the update are
  regrown (unmasked, starting at 0): at random (`regrow = "random"`, SET: Mocanu et al. 2018)
  or those of largest dense gradient magnitude on a batch of the experience about to be (or
  being) trained (`regrow = "gradient"`, RigL: Evci et al. 2020). k is capped by the number
  of inactive entries, so the number of active entries never changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqmem.continual.base import Method, experience_loss, register_method
from seqmem.errors import SeqmemError, check_choice, check_int

REGROW = ("random", "gradient")


def sparse_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that `sparse` masks: the blocks' tensors of 2 or more dimensions whose
    names have no "log" in them (see the module docstring)."""
    return {n: p for n, p in model.named_parameters()
            if n.startswith("blocks.") and p.ndim >= 2 and "log" not in n.rsplit(".", 1)[-1]}


def random_mask(shape: torch.Size, density: float, generator: torch.Generator) -> Tensor:
    """A 0/1 float mask with exactly round(density n) ones at uniformly random places."""
    n = int(torch.Size(shape).numel())
    keep = torch.randperm(n, generator=generator)[: round(density * n)]
    mask = torch.zeros(n, device=keep.device)  # on the CPU with the draws; callers move it
    mask[keep] = 1.0
    return mask.view(shape)


def prune_and_regrow(weight: Tensor, mask: Tensor, fraction: float, *, regrow: str,
                     grad: Tensor | None = None, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, int]:
    """One update of a mask: prune the k = round(fraction x active) active entries of smallest
    |weight| and regrow k entries that were inactive before (at random, or those of largest
    |grad|); k is capped by the inactive count. Returns (the new mask, k)."""
    flat_m = mask.reshape(-1)
    active = flat_m.nonzero().squeeze(1)  # (n_active,)
    inactive = (flat_m == 0).nonzero().squeeze(1)  # (n_inactive,)
    k = min(round(fraction * len(active)), len(inactive))
    if k == 0:
        return mask.clone(), 0
    mag = weight.detach().reshape(-1)[active].abs()
    pruned = active[torch.topk(mag, k, largest=False).indices]
    if regrow == "random":
        pick = torch.randperm(len(inactive), generator=generator)[:k]  # drawn on the CPU
        grown = inactive[pick.to(inactive.device)]
    else:
        score = grad.detach().reshape(-1)[inactive].abs()
        grown = inactive[torch.topk(score, k).indices]
    new = flat_m.clone()
    new[pruned] = 0.0
    new[grown] = 1.0
    return new.view(mask.shape), k


@register_method("sparse")
class Sparse(Method):
    """Dynamic sparse training: fixed-sparsity masks on the sequence layers' weights, pruned
    by magnitude and regrown at random or by gradient at each experience boundary (and every
    `update_every` steps), masked weights exactly zero (Yildirim et al. 2023).

    Args:
        sparsity: fraction of each masked tensor's entries that are zero, in [0, 1).
        prune_fraction: fraction of the active entries pruned (and as many regrown) per update.
        regrow: "random" (SET) or "gradient" (RigL: largest dense gradient magnitude).
        update_every: also update every this many steps within an experience (0: only at
            experience boundaries).
        grad_batch_size: examples of the batch whose gradient ranks the regrowth.
    """

    def __init__(self, model, protocol, seed=0, *, sparsity: float = 0.5,
                 prune_fraction: float = 0.2, regrow: str = "random", update_every: int = 0,
                 grad_batch_size: int = 32):
        super().__init__(model, protocol, seed)
        for what, v, top in (("sparsity", sparsity, "1)"), ("prune_fraction", prune_fraction,
                                                               "1]")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 \
                    or (v == 1 and top == "1)"):
                raise SeqmemError(f"sparse: {what} must be a number in [0, {top}, got {v!r}")
        self.sparsity, self.fraction = float(sparsity), float(prune_fraction)
        self.regrow = check_choice("sparse: regrow", regrow, REGROW)
        self.update_every = check_int("sparse: update_every", update_every, low=0)
        self.grad_batch_size = check_int("sparse: grad_batch_size", grad_batch_size, low=1)
        self.params = sparse_parameters(model)
        if not self.params:
            raise SeqmemError("sparse: this model's blocks have no weight matrix to make sparse")
        gen = self.generator(1)
        self.masks = {n: random_mask(p.shape, 1 - self.sparsity, gen).to(p)
                      for n, p in self.params.items()}
        self.regrow_gen = self.generator(2)
        self.grad_gen = self.generator(3)
        self.history: list[dict] = []  # per update: {name: (pruned, regrown)}
        self._dense = False  # True while a dense gradient is taken for regrowth
        self._step = 0
        for n, p in self.params.items():
            p.register_hook(lambda g, n=n: g if self._dense else g * self.masks[n])
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Set every masked entry to exactly 0."""
        for n, p in self.params.items():
            p.mul_(self.masks[n])

    def dense_gradients(self, i: int) -> dict[str, Tensor]:
        """The gradients of experience i's loss on one batch (from the method's generator
        stream 3) w.r.t. the masked tensors, masked entries included."""
        batch = self.sample(self.protocol.experiences[i].train, self.grad_batch_size,
                            self.grad_gen)
        self._dense = True
        try:
            loss, _ = experience_loss(self.logits(i, batch.inputs), batch)
            grads = torch.autograd.grad(loss, list(self.params.values()), allow_unused=True)
        finally:
            self._dense = False
        return {n: (torch.zeros_like(p) if g is None else g)
                for (n, p), g in zip(self.params.items(), grads, strict=True)}

    def update(self, i: int) -> dict[str, tuple[int, int]]:
        """One prune-and-regrow update of every mask (see the module docstring), ranking the
        regrowth by experience i's gradient; returns {name: (pruned, regrown)}."""
        grads = self.dense_gradients(i) if self.regrow == "gradient" else {}
        counts = {}
        for n, p in self.params.items():
            new, _ = prune_and_regrow(p, self.masks[n], self.fraction, regrow=self.regrow,
                                      grad=grads.get(n), generator=self.regrow_gen)
            counts[n] = (int(((self.masks[n] == 1) & (new == 0)).sum()),
                         int(((self.masks[n] == 0) & (new == 1)).sum()))
            self.masks[n].copy_(new)
        self.apply_masks()  # pruned weights to 0; regrown ones start at 0
        self.history.append(counts)
        return counts

    def before_experience(self, i, gen):
        self._step = 0
        if i > 0 or self.seen:  # every boundary: before each experience but the very first
            self.update(i)

    def after_step(self, i, batches, gen):
        self.apply_masks()  # the optimizer's moments may move a masked entry; undo it
        self._step += 1
        if self.update_every and self._step % self.update_every == 0:
            self.update(i)

    def state(self):
        return {**super().state(), "masks": {n: m.clone() for n, m in self.masks.items()},
                "regrow_gen": self.regrow_gen.get_state(), "grad_gen": self.grad_gen.get_state()}

    def load_state(self, state):
        super().load_state(state)
        for n, m in state["masks"].items():
            self.masks[n].copy_(m)
        self.regrow_gen.set_state(state["regrow_gen"])
        self.grad_gen.set_state(state["grad_gen"])
