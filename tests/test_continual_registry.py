"""Continual registries: every registered method and protocol builds and checks its options,
methods draw only from the generators they are given, the hypernetwork starts at torch's
default initialisation drawn from its own generator, and a new fixed-data task or a new
method works without editing the package."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from seqmem.continual import (
    METHODS,
    PROTOCOLS,
    Method,
    build_method,
    build_protocol,
    experience_loss,
    register_method,
    register_protocol,
)
from seqmem.continual import base as continual_base
from seqmem.continual.hnet import ChunkedHyperNetwork, RNNHyperNetwork
from seqmem.continual.protocols import fixed_data_tasks
from seqmem.errors import SeqmemError
from seqmem.models import SequenceModel
from seqmem.registry import Registry, hyperparameters
from seqmem.tasks import base as tasks_base
from seqmem.tasks.base import Batch, Task


def _setup(n_max: int = 3) -> tuple:
    proto = build_protocol("n_curriculum", n_max=n_max)
    torch.manual_seed(0)
    return proto, SequenceModel(proto.d_input, 8, heads=proto.heads)


# ---- the registries ----------------------------------------------------------------------------
def test_registries_list_every_builder_in_registration_order():
    assert tuple(continual_base.method_names()) == METHODS and METHODS[0] == "finetune"
    assert set(METHODS) == {"finetune", "joint", "multihead", "replay", "ewc", "si", "hnet",
                            "rnn_hnet", "sparse"}
    assert PROTOCOLS == ("n_curriculum", "split", "permuted", "tasks", "dynamics", "power_law")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_builds_and_accepts_exactly_its_keyword_options(name):
    proto, model = _setup()
    m = build_method(name, model, proto, seed=3)
    assert type(m).name == name and m.seed == 3
    accepted = ", ".join(hyperparameters(type(m))) or "(none)"
    msg = f"unknown option(s) nope for method '{name}'; accepted: {accepted}"
    with pytest.raises(SeqmemError, match=f"^{re.escape(msg)}$"):
        build_method(name, model, proto, nope=1)


@pytest.mark.parametrize("name", METHODS)
def test_methods_draw_only_from_the_generators_they_are_given(name):
    proto, model = _setup()
    before = torch.get_rng_state()
    m = build_method(name, model, proto, seed=1)
    gen = torch.Generator().manual_seed(0)
    for i in range(2):
        m.before_experience(i, gen)
        opt = torch.optim.SGD(m.parameters(i), lr=0.01)
        batches = m.train_batches(i, 4, gen)
        loss = sum(experience_loss(m.logits(j, b.inputs), b)[0] for j, b in batches)
        opt.zero_grad()
        (loss + m.penalty(i)).backward()
        opt.step()
        m.after_step(i, batches, gen)
        m.after_experience(i, gen)
    assert torch.equal(torch.get_rng_state(), before)


def test_protocols_check_options_and_take_the_default_setting_of_their_function():
    assert build_protocol("n_curriculum", n_max=3).setting == "task"
    assert build_protocol("permuted", n_experiences=1).setting == "domain"
    assert build_protocol("permuted", "task", n_experiences=2).heads == [10, 10]
    with pytest.raises(SeqmemError, match=r"^unknown option\(s\) n_exp for protocol 'split'; "
                                          r"accepted: task, n_experiences$"):
        build_protocol("split", n_exp=2)
    with pytest.raises(SeqmemError, match=r"^unknown setting 'class'; accepted: task, domain$"):
        build_protocol("split", "class")
    with pytest.raises(SeqmemError, match="protocol tasks needs a non-empty list"):
        build_protocol("tasks")


def test_registration_checks_the_signature_build_calls():
    with pytest.raises(TypeError, match=r"must begin \(self, model, protocol, seed=0"):
        @register_method("no_seed")
        class NoSeed(Method):
            def __init__(self, model, protocol, *, lam: float = 1.0):
                super().__init__(model, protocol)

    with pytest.raises(TypeError, match=r"must begin \(setting=<one of task, domain>"):
        @register_protocol("no_setting")
        def no_setting(*, task: str = "mnist1d"):
            return None

    assert "no_seed" not in continual_base.method_names()
    assert "no_setting" not in continual_base.protocol_names()


def test_registry_orders_builds_and_rejects_duplicates():
    reg = Registry("widget", sort=False)

    @reg.register("b")
    def make_b(x: int, *, scale: int = 2) -> int:
        return x * scale

    @reg.register("a")
    class A:
        def __init__(self, *, size: int = 1):
            self.size = size

    assert reg.names() == ["b", "a"] and make_b.name == "b" and A.name == "a"
    assert reg.build("b", 3, scale=5) == 15 and reg.build("a", size=4).size == 4
    assert list(hyperparameters(make_b)) == ["scale"] and list(hyperparameters(A)) == ["size"]
    with pytest.raises(SeqmemError, match=r"^unknown option\(s\) siz for widget 'a'; "
                                          r"accepted: size$"):
        reg.build("a", siz=4)
    with pytest.raises(SeqmemError, match=r"^unknown widget 'c'; accepted: b, a$"):
        reg.get("c")
    with pytest.raises(SeqmemError, match="widget name 'a' is already registered"):
        reg.register("a")(make_b)
    assert Registry("widget").names() == [] and sorted(reg.names()) == ["a", "b"]


# ---- hypernetworks -----------------------------------------------------------------------------
@pytest.mark.parametrize("network", [ChunkedHyperNetwork, RNNHyperNetwork])
def test_hypernetwork_starts_at_torchs_initialisation_drawn_from_its_generator(network):
    # the oracle: torch's own modules, drawing from the global generator in the same state
    torch.manual_seed(5)
    emb = [torch.randn(4) for _ in range(3)]
    chunk_emb = torch.randn(4, 2)  # ceil(50 / 16) chunks
    if network is RNNHyperNetwork:
        body = nn.LSTM(6, 16, batch_first=True)
    else:
        body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    out = nn.Linear(16, 16)
    state = torch.get_rng_state()
    net = network(3, 50, generator=torch.Generator().manual_seed(5), d_emb=4, d_chunk_emb=2,
                  chunk=16, hidden=16)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is not drawn from
    for e, ref in zip(net.task_emb, emb, strict=True):
        assert torch.equal(e, ref)
    assert torch.equal(net.chunk_emb, chunk_emb)
    for (n, p), (m, ref) in zip(net.body.named_parameters(), body.named_parameters(),
                                strict=True):
        assert n == m and torch.equal(p, ref)
    torch.testing.assert_close(net.out.weight, 0.1 * out.weight, rtol=0, atol=0)
    assert not net.out.bias.any()
    assert net(2).shape == (50,)


@pytest.mark.parametrize("name", ["hnet", "rnn_hnet"])
def test_hnet_initialisation_follows_the_seed(name):
    def weights(seed: int) -> list[torch.Tensor]:
        proto, model = _setup()
        return [p.detach() for p in build_method(name, model, proto, seed=seed).hnet.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(weights(0), weights(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights(0), weights(1), strict=True))


# ---- extension: a new task, a new method -----------------------------------------------------
class SixClasses(Task):
    """A fixed labelled set of 6 classes: example k of a split is the constant sequence
    class + k / 1000 of length 5, its class at the last step."""

    name = "six_classes"
    fixed_data = True

    def __init__(self, *, split: str = "train"):
        self.split, self.d_input, self.heads = split, 1, [6]

    def _data(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = 60 if self.split == "train" else 30
        y = torch.arange(n) % 6  # (n,)
        x = (y + torch.arange(n) / 1000).float()[:, None, None].expand(n, 5, 1)  # (n, 5, 1)
        return x, y

    def sample(self, batch_size: int, *, generator: torch.Generator) -> Batch:
        x, y = self._data()
        index = torch.randint(0, len(y), (batch_size,), generator=generator)  # (b,)
        targets = torch.zeros(batch_size, 5, 1, dtype=torch.long)  # (b, t, 1)
        targets[:, -1, 0] = y[index]
        mask = torch.zeros(batch_size, 5, dtype=torch.bool)  # (b, t)
        mask[:, -1] = True
        return Batch(x[index], targets, mask, {"seq_len": 5})


def test_a_new_fixed_data_task_works_with_split_and_permuted(monkeypatch):
    monkeypatch.setitem(tasks_base._REGISTRY._builders, "six_classes", SixClasses)
    assert fixed_data_tasks() == ["mnist1d", "seq_digits", "six_classes"]
    proto = build_protocol("split", task="six_classes", n_experiences=3)
    assert proto.heads == [2, 2, 2] and [e.name for e in proto.experiences] == ["0/1", "2/3",
                                                                                 "4/5"]
    for i, e in enumerate(proto.experiences):
        batch = e.train.sample(32, generator=torch.Generator().manual_seed(i))
        label = batch.targets[:, -1, 0]  # (b,)
        assert torch.equal(batch.inputs[:, -1, 0].floor().long(), 2 * i + label)
    with pytest.raises(SeqmemError, match=r"split n_experiences must be an integer in \[1, 3\]"):
        build_protocol("split", task="six_classes", n_experiences=4)
    with pytest.raises(SeqmemError, match=r"^unknown split task 'n_parity'; accepted: mnist1d, "
                                          r"seq_digits, six_classes$"):
        build_protocol("split", task="n_parity")
    perm = build_protocol("permuted", task="six_classes", n_experiences=2)
    assert perm.heads == [6] and sorted(perm.experiences[1].train.perm.tolist()) == [0, 1, 2,
                                                                                      3, 4]


def test_a_new_method_is_one_registered_class():
    try:
        @register_method("l2_anchor")
        class L2Anchor(Method):
            """Penalty (lambda / 2) ||theta - theta*||^2, theta* the weights after the last
            experience (the L2 baseline of Kirkpatrick et al. 2017)."""

            def __init__(self, model, protocol, seed=0, *, l2_lambda: float = 1.0):
                super().__init__(model, protocol, seed)
                self.lam, self.star = l2_lambda, None

            def penalty(self, i):
                if self.star is None:
                    return 0.0
                return self.lam / 2 * sum(((p - s) ** 2).sum() for p, s in
                                          zip(self.model.parameters(), self.star, strict=True))

            def after_experience(self, i, gen):
                self.star = [p.detach().clone() for p in self.model.parameters()]

        proto, model = _setup()
        m = build_method("l2_anchor", model, proto, l2_lambda=4.0)
        assert isinstance(m, L2Anchor) and m.penalty(0) == 0.0
        m.after_experience(0, torch.Generator())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)
        n = sum(p.numel() for p in model.parameters())
        assert m.penalty(1).item() == pytest.approx(4.0 / 2 * 0.25 * n)
        with pytest.raises(SeqmemError, match=r"accepted: l2_lambda$"):
            build_method("l2_anchor", model, proto, lam=1.0)
    finally:
        continual_base._METHODS._builders.pop("l2_anchor", None)
    assert "l2_anchor" not in continual_base.method_names()
