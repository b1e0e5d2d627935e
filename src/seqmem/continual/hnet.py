"""Task-conditioned hypernetworks for continual learning.

`hnet` (von Oswald, Henning, Grewe & Sacramento 2020, "Continual learning with
hypernetworks"): a hypernetwork f_h(e, Theta_h) maps a learned task embedding e_t to all the
weights of the target network. It is chunked, as in the paper: the weight vector is cut into
chunks of `hnet_chunk` numbers and one MLP, fed [e_t, c_k] with a learned chunk embedding c_k,
emits chunk k. While learning task T, the output regulariser

    beta / (T - 1) sum_{t < T} || f_h(e_t, Theta_h) - f_h(e_t, Theta_h*) ||^2

keeps every earlier task's generated weights where they were (Theta_h* is the hypernetwork
before task T, e_t the stored embeddings, which are not trained after their task).

`rnn_hnet` (Chandra, Varshney, Srijith & Gupta 2023, "Continual Learning with Dependency
Preserving Hypernetworks"): the hypernetwork is an LSTM that generates the chunks one after
another, [e_t, c_k] in at step k and chunk k out, so the weights of later layers depend on
those generated before them through the LSTM's state, with few parameters (the output layer
is one chunk wide). The same output regulariser. (The paper's growth and importance-weighted
regularisation variants are not included.)

seqmem's choices: the hypernetwork emits an offset from a fixed random initialisation theta_0
of the target network (generated weights = theta_0 + f_h), so an untrained hypernetwork gives
the target's usual initialisation and parameterisations with a clamp (the leaky RNN's tau >= 1)
start where they would; the task's read-out head is generated with the rest. The target
network is run with its generated weights by `torch.func.functional_call`, so every mixer in
the registry works.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

from seqmem.continual.base import Method, register_method
from seqmem.errors import SeqmemError


class ChunkedHyperNetwork(nn.Module):
    """MLP hypernetwork: [e_t, c_k] -> chunk k of the weight vector (n_out numbers).

    The embeddings are drawn N(0, 1) and the layers as torch initialises them, all from
    `generator`, in that order (the numbers torch's modules would draw from a global generator
    in the same state), on `device` (None: torch's default device)."""

    def __init__(self, n_tasks: int, n_out: int, *, generator: torch.Generator,
                 device: torch.device | str | None = None, d_emb: int = 8,
                 d_chunk_emb: int = 8, chunk: int = 256, hidden: int = 64):
        super().__init__()
        if min(n_tasks, n_out, d_emb, d_chunk_emb, chunk, hidden) < 1:
            raise SeqmemError("hypernetwork sizes must be >= 1")
        device = torch.get_default_device() if device is None else torch.device(device)
        self.n_out, self.chunk = n_out, chunk
        self.n_chunks = math.ceil(n_out / chunk)

        def normal(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator).to(device))

        self.task_emb = nn.ParameterList(normal(d_emb) for _ in range(n_tasks))
        self.chunk_emb = normal(self.n_chunks, d_chunk_emb)  # (n_chunks, d_chunk_emb)
        self.body = _torch_init(self._body(d_emb + d_chunk_emb, hidden), generator, device)
        self.out = _torch_init(nn.Linear(hidden, chunk, device="meta"), generator, device)
        _small_output(self.out)

    def _body(self, d_in: int, hidden: int) -> nn.Module:
        """The layers before the output layer, on the meta device (the constructor draws
        their numbers)."""
        return nn.Sequential(nn.Linear(d_in, hidden, device="meta"), nn.ReLU(),
                             nn.Linear(hidden, hidden, device="meta"), nn.ReLU())

    def inputs(self, t: int) -> Tensor:
        e = self.task_emb[t].expand(self.n_chunks, -1)  # (n_chunks, d_emb)
        return torch.cat([e, self.chunk_emb], dim=-1)  # (n_chunks, d_emb + d_chunk_emb)

    def forward(self, t: int) -> Tensor:
        """The flat weight offset of task t, (n_out,)."""
        return self.out(self.body(self.inputs(t))).reshape(-1)[: self.n_out]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Everything but the task embeddings."""
        emb = {id(p) for p in self.task_emb}
        return [p for p in self.parameters() if id(p) not in emb]


class RNNHyperNetwork(ChunkedHyperNetwork):
    """LSTM hypernetwork: chunk k is read from the LSTM's state after steps 0..k, so it
    depends on every chunk generated before it."""

    def _body(self, d_in: int, hidden: int) -> nn.Module:
        return nn.LSTM(d_in, hidden, batch_first=True, device="meta")

    def forward(self, t: int) -> Tensor:
        h, _ = self.body(self.inputs(t)[None])  # (1, n_chunks, hidden)
        return self.out(h[0]).reshape(-1)[: self.n_out]


@torch.no_grad()
def _torch_init(module: nn.Module, gen: torch.Generator, device: torch.device) -> nn.Module:
    """`module`, built on the meta device, allocated on `device` with torch's default
    initialisation of its nn.Linear and nn.LSTM layers drawn from `gen`: U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) for a Linear's weight and bias (kaiming uniform with a = sqrt(5)),
    U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for every LSTM parameter."""
    module = module.to_empty(device=device)
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1 / math.sqrt(layer.in_features)
        elif isinstance(layer, nn.LSTM):
            bound = 1 / math.sqrt(layer.hidden_size)
        else:
            continue
        for p in layer.parameters(recurse=False):
            # drawn on the CPU, where the generator is, whatever the module's device
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
    return module


def _small_output(layer: nn.Linear) -> None:
    """Small output weights and zero bias: an untrained hypernetwork emits offsets near 0."""
    with torch.no_grad():
        layer.weight.mul_(0.1)
        layer.bias.zero_()


def output_regularizer(hnet: ChunkedHyperNetwork, stored: list[Tensor] | dict[int, Tensor],
                       beta: float) -> Tensor | float:
    """beta / n sum_t || f_h(e_t) - stored[t] ||^2 over the n = len(stored) earlier tasks t
    (a list: tasks 0..n-1; a dict: its keys, for protocols that revisit tasks; 0 on the first
    task)."""
    if not stored:
        return 0.0
    items = stored.items() if isinstance(stored, dict) else enumerate(stored)
    return beta / len(stored) * sum(((hnet(t) - w) ** 2).sum() for t, w in items)


@register_method("hnet")
class HNet(Method):
    """Train a hypernetwork and the current task's embedding (von Oswald et al. 2020); the
    target's own weights stay at their initialisation theta_0. The hypernetwork's initial
    numbers come from the method's generator stream 1."""

    network = ChunkedHyperNetwork

    def __init__(self, model, protocol, seed=0, *, hnet_beta: float = 0.01, hnet_emb: int = 8,
                 hnet_chunk_emb: int = 8, hnet_chunk: int = 256, hnet_hidden: int = 64):
        super().__init__(model, protocol, seed)
        if not hnet_beta >= 0:
            raise SeqmemError(f"hnet_beta must be >= 0, got {hnet_beta!r}")
        self.beta = float(hnet_beta)
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        n_out = sum(math.prod(s) for s in self.shapes)
        self.hnet = self.network(len(protocol), n_out, generator=self.generator(1),
                                 device=next(model.parameters()).device, d_emb=hnet_emb,
                                 d_chunk_emb=hnet_chunk_emb, chunk=hnet_chunk,
                                 hidden=hnet_hidden)
        self.stored: dict[int, Tensor] = {}

    def weights(self, j: int) -> dict[str, Tensor]:
        """The target network's weights for task j: theta_0 + f_h(e_j)."""
        flat, out, k = self.hnet(j), {}, 0
        for n, s in zip(self.names, self.shapes, strict=True):
            m = math.prod(s)
            out[n] = self.theta0[n] + flat[k:k + m].view(s)
            k += m
        return out

    def logits(self, j, x):
        head = self.protocol.experiences[j].head
        (z,), _ = functional_call(self.model, self.weights(j), (x,), {"heads": [head]})
        return z

    def parameters(self, i):
        return [*self.hnet.shared_parameters(), self.hnet.task_emb[i]]

    def penalty(self, i):
        return output_regularizer(self.hnet, self.stored, self.beta)

    def before_experience(self, i, gen):
        with torch.no_grad():  # f_h(e_t, Theta_h*) of the earlier tasks (all but task i)
            self.stored = {t: self.hnet(t).detach().clone() for t in self.earlier(i)}

    def state(self):
        return {"hnet": self.hnet.state_dict(), "theta0": self.theta0}

    def load_state(self, state):
        self.hnet.load_state_dict(state["hnet"])
        self.theta0 = state["theta0"]


@register_method("rnn_hnet")
class RNNHNet(HNet):
    """`hnet` with the LSTM hypernetwork of Chandra et al. 2023."""

    network = RNNHyperNetwork
